"""The consumer host: the VM-facing API, lease pools, and the tunnel's near end."""

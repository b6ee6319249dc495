"""Example services that leasenet runs as command VMs (the user's own code: no leasenet imports)."""

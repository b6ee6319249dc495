"""The producer host: registers its VMs, runs them as actors, and is the tunnel's far end."""

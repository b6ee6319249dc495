"""The VM mapping repository over etcd: records, leasing, the watch-synced replica, the registry service."""

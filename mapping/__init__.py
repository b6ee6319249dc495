"""The VM mapping repository every process shares: typed records, the etcd key schema, the Store
over etcd (and its in-memory twin), the watch-synced replica, host liveness and the cluster config."""

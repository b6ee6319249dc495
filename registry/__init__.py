"""`leasenet registry`, the leasing agent: grants, grows, shrinks, renews and releases lease pools in
etcd, collects dead claims, and serves the leasing and inspection gRPC APIs."""

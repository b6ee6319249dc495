"""leasenet: lease pools of producer VMs to consumer VMs across a gRPC overlay, leases in etcd."""

__version__ = "0.1.0"

"""The bottom layer: generated gRPC stubs (wire.v1, proto package leasenet.v1), the rpc helpers
every server and client shares, and the error vocabulary with its gRPC statuses."""

"""gRPC metadata as the tunnel's Call frames carry it (MetadataEntry: key, bytes value), both ways:
the one conversion the consumer host's VIP endpoints and the producer host's calls to VMs share.
`-bin` values stay bytes; every other value is text."""

from __future__ import annotations

from collections.abc import Iterable

from wire.v1 import tunnel_pb2 as pb

Metadata = tuple[tuple[str, str | bytes], ...]


def to_grpc_metadata(entries: Iterable[pb.MetadataEntry]) -> Metadata:
    """Tunnel entries as grpc metadata."""
    return tuple((e.key, e.value if e.key.endswith("-bin") else e.value.decode("utf-8", "replace")) for e in entries)


def to_entries(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[pb.MetadataEntry]:
    """grpc metadata as tunnel entries."""
    return [pb.MetadataEntry(key=k, value=v if isinstance(v, bytes) else v.encode()) for k, v in metadata or ()]

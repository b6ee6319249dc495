"""The one "no" a pure rule answers with: the error type (which carries the status, wire/errors.py)
and the sentence for the caller. Admission on the consumer host, frame validation on the producer
host, the registry's authorisation rules and the failover verdict all return it; the I/O edge that
asked raises `exception()`. Also the one check that a peer's certificate names the kind of process a
call is for. Pure: no grpc, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wire.errors import LeasenetError, PermissionDenied, Status

if TYPE_CHECKING:  # wire.tls imports grpc; the kind is compared by value (Kind is a str enum)
    from wire.tls import Identity


@dataclass(frozen=True, slots=True)
class Refusal:
    error: type[LeasenetError]
    message: str

    @property
    def code(self) -> Status:
        return self.error.code

    def exception(self) -> LeasenetError:
        return self.error(self.message)


@dataclass(frozen=True, slots=True)
class PeerKind:
    """Only a peer whose certificate names a `kind` identity may make this call; the refusal says
    so in the words of the API that asks. The sentences are built only for a peer refused: the
    check runs per tunnel frame."""

    kind: str  # a wire.tls.Kind's value
    rule: str  # what the API allows, e.g. "only consumer hosts send tunnel frames"
    peer: str  # who the peer is to that API, e.g. "this stream's peer"
    certificate: str  # whose certificate named nobody, e.g. "the tunnel's peer certificate"

    def check(self, peer: Identity | None) -> Identity | Refusal:
        """`peer` itself when it is of the kind, else why not. None: its certificate names no identity."""
        if peer is None:
            return Refusal(PermissionDenied, f"{self.certificate} names no leasenet identity")
        if peer.kind != self.kind:
            return Refusal(PermissionDenied, f"{self.rule}; {self.peer} is {peer}")
        return peer

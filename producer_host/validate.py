"""Frame validation at the producer host (SPEC §3 step 11): a pure function from a frame's
addressing, the stream's peer and the replica's state to a verdict. Each reason to refuse has its
own status.

Who sent a frame is the stream's peer certificate (SPEC §10), never the frame's `src_host`, a field
the sender fills in: a frame is delivered only for a claim whose pool the peer consumer host owns,
and refused when that cannot be told. `src_host` must still match the owner's registered address
(a header that lies is refused), but only a producer host started with `--insecure` (no
certificates) takes that as the word on who sent it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mapping.model import Claim, HostId, VmId, vm_id
from mapping.state import ClusterState
from wire.limits import payload_too_large
from wire.errors import InvalidRequest, NotFound, PermissionDenied, StaleClaim
from wire.verdict import PeerKind, Refusal

if TYPE_CHECKING:  # wire.tls imports grpc, and this module stays pure
    from wire.tls import Identity

CONSUMER = "consumer"  # wire.tls.Kind.CONSUMER, a str enum
SENDER = PeerKind(CONSUMER, "only consumer hosts send tunnel frames", peer="this stream's peer",
                  certificate="the tunnel's peer certificate")


@dataclass(frozen=True, slots=True)
class Addressing:
    """What validation reads from a frame."""

    vni: int
    src_host: str
    dst_host: str
    fencing_token: int
    network: str
    src: str
    dst: str
    payload_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Accept:
    vm: VmId
    claim: Claim


@dataclass(frozen=True, slots=True)
class MaybeEarly(Refusal):
    """A refusal that may not be final, unlike every other: the frame's claim may simply not have
    reached our replica yet, so the producer host parks the frame and validates it again as the
    replica moves, answering with this refusal only when its wait is over."""


Verdict = Accept | Refusal


def may_open_tunnel(peer: Identity | None) -> Refusal | None:
    """Only consumer hosts send frames: anyone else is refused before a frame is read."""
    sender = SENDER.check(peer)
    return sender if isinstance(sender, Refusal) else None


def may_send_frame(peer: Identity | None, claim: Claim) -> Refusal | None:
    """A frame for `claim` only from the consumer host whose pool holds the claim: the claim names it
    (registries write it in the grant's transaction; this host watches only its own VMs' claims)."""
    sender = SENDER.check(peer)
    if isinstance(sender, Refusal):
        return sender
    if claim.consumer_host != sender.id:
        return Refusal(PermissionDenied, f"the claim on producer VM {claim.vm} belongs to another consumer host's "
                                         f"pool, not to {sender}")
    return None


def validate(frame: Addressing, state: ClusterState, host_id: HostId, address: str, peer: Identity | None,
             *, insecure: bool = False) -> Verdict:
    """`peer`: the stream's certificate identity; `insecure`: there is none, believe `src_host`."""
    if not (frame.network and frame.src and frame.dst and frame.src_host):
        return Refusal(InvalidRequest, "frame is missing its inner or outer header fields")
    if (too_large := payload_too_large(frame.payload_bytes)) is not None:
        return Refusal(InvalidRequest, too_large)
    if frame.dst_host != address:
        return Refusal(InvalidRequest,
                       f"frame is addressed to host {frame.dst_host}, but this is host {address}")
    network = state.networks.get(frame.network)
    if network is None or network.vni != frame.vni:
        return Refusal(NotFound,
                       f"VNI {frame.vni} (network {frame.network!r}) is not a known overlay network here")
    vm = vm_id(frame.network, frame.dst)
    record = state.vms.get(vm)
    if record is None or record.host_id != host_id:
        return Refusal(NotFound, f"producer VM {vm} is not hosted on host {host_id}")
    claim = state.claims.get(vm)
    if claim is None or not holds_claim(state, vm, frame.fencing_token):
        stale = (f"fencing token {frame.fencing_token} is not the current claim on producer VM {vm} "
                 f"(the lease expired, was released, or the VM was re-registered)")
        early = claim is None or frame.fencing_token > claim.revision  # our replica may be behind the frame
        return MaybeEarly(StaleClaim, stale) if early else Refusal(StaleClaim, stale)
    if not insecure and (refused := may_send_frame(peer, claim)):
        return refused  # before the checks below: a forger learns nothing of another tenant
    # with certificates a header consistency check; with --insecure the only word on the sender
    consumer_host = state.hosts.get(claim.consumer_host)
    if consumer_host is not None and consumer_host.address != frame.src_host:
        return Refusal(PermissionDenied,
                       f"the claim on producer VM {vm} belongs to consumer host {claim.consumer_host} "
                       f"({consumer_host.address}), but the frame came from {frame.src_host}")
    consumer = vm_id(frame.network, frame.src)
    if claim.consumer_vm != consumer:
        return Refusal(PermissionDenied,
                       f"producer VM {vm} is leased to consumer VM {claim.consumer_vm}, not to {consumer}")
    return Accept(vm, claim)


def holds_claim(state: ClusterState, vm: VmId, token: int) -> bool:
    """`token` is the VM's current claim: the claim exists, is the one `token` names, and claimed the
    VM incarnation registered now. Asked when a frame arrives and again when its request starts."""
    claim, record = state.claims.get(vm), state.vms.get(vm)
    return (claim is not None and record is not None and claim.revision == token
            and claim.vm_revision == record.revision)

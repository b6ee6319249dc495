"""Frame validation at the producer host (SPEC §3 step 11): a pure function from a frame's
addressing and the replica's state to a verdict. Each reason to refuse has its own status."""

from __future__ import annotations

from dataclasses import dataclass

from mapping.model import Claim, HostId, VmId, vm_id
from mapping.state import ClusterState
from wire.errors import InvalidRequest, LeasenetError, NotFound, PermissionDenied, StaleClaim, Status


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


@dataclass(frozen=True, slots=True)
class Accept:
    vm: VmId
    claim: Claim


@dataclass(frozen=True, slots=True)
class Reject:
    error: type[LeasenetError]
    message: str
    # the claim may simply not have reached our replica yet: worth waiting for the revision
    may_be_early: bool = False

    @property
    def code(self) -> Status:
        return self.error.code


Verdict = Accept | Reject


def validate(frame: Addressing, state: ClusterState, host_id: HostId, address: str) -> Verdict:
    if not (frame.network and frame.src and frame.dst and frame.src_host):
        return Reject(InvalidRequest, "frame is missing its inner or outer header fields")
    if frame.dst_host != address:
        return Reject(InvalidRequest,
                      f"frame is addressed to host {frame.dst_host}, but this is host {address}")
    network = state.networks.get(frame.network)
    if network is None or network.vni != frame.vni:
        return Reject(NotFound,
                      f"VNI {frame.vni} (network {frame.network!r}) is not a known overlay network here")
    vm = vm_id(frame.network, frame.dst)
    record = state.vms.get(vm)
    if record is None or record.host_id != host_id:
        return Reject(NotFound, f"producer VM {vm} is not hosted on host {host_id}")
    claim = state.claims.get(vm)
    if claim is None or claim.revision != frame.fencing_token or claim.vm_revision != record.revision:
        return Reject(StaleClaim,
                      f"fencing token {frame.fencing_token} is not the current claim on producer VM {vm} "
                      f"(the lease expired, was released, or the VM was re-registered)",
                      may_be_early=claim is None or frame.fencing_token > claim.revision)
    consumer = vm_id(frame.network, frame.src)
    if claim.consumer_vm != consumer:
        return Reject(PermissionDenied,
                      f"producer VM {vm} is leased to consumer VM {claim.consumer_vm}, not to {consumer}")
    consumer_host = state.hosts.get(claim.consumer_host)
    if consumer_host is not None and consumer_host.address != frame.src_host:
        return Reject(PermissionDenied,
                      f"the claim on producer VM {vm} belongs to consumer host {claim.consumer_host} "
                      f"({consumer_host.address}), but the frame came from {frame.src_host}")
    return Accept(vm, claim)

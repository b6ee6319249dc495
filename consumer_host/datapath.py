"""The pure core of the request path (SPEC §3). No I/O, no asyncio, no protobuf: the service
module asks these functions what to do, then does it.

    attached(), admit() step 1   source is an attached VM (token: gate.py), target exists in its network
    HeldPool.decide()  steps 4-6 use an unused VM, grow the pool, or wait
    route()            steps 7-9 rewrite the destination, resolve the host, build the outer header
    answer_source()    step 12   the response's source becomes the target virtual address
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer_host.tokens import Secret
from mapping.model import Claim, LeaseId, Service, VmId, parse_target, vm_id
from mapping.state import ClusterState
from wire.errors import InvalidRequest, NotFound, PermissionDenied
from wire.verdict import Refusal


@dataclass(frozen=True, slots=True)
class Attachment:
    """A consumer VM attached to this consumer host (from configuration), with its token's hash."""

    network: str
    address: str
    secret: Secret = field(repr=False)

    @property
    def vm_id(self) -> VmId:
        return vm_id(self.network, self.address)


@dataclass(frozen=True, slots=True)
class Admitted:
    attachment: Attachment
    service: Service
    vni: int


def attached(attachments: dict[VmId, Attachment], network: str, src: str) -> Attachment | Refusal:
    """Step 1, first half: the source is a consumer VM attached here (its token: consumer_host.gate)."""
    attachment = attachments.get(vm_id(network, src))
    if attachment is None:
        return Refusal(PermissionDenied,
                       f"source {src} in network {network!r} is not a consumer VM attached to this host")
    return attachment


def admit(attachment: Attachment, state: ClusterState, target: str) -> Admitted | Refusal:
    """Step 1, second half (the token checked): the target exists in the VM's own network. A
    target of another network is refused without naming that network (SPEC §10: tenants never
    learn of each other)."""
    network, src = attachment.network, attachment.address
    service = state.services_by_target.get((network, target))
    if service is None:
        try:
            parse_target(target)
        except ValueError as exc:
            return Refusal(InvalidRequest, str(exc))
        elsewhere = [s for s in state.services.values() if s.target == target]
        if elsewhere:
            return Refusal(PermissionDenied,
                           f"consumer VM {src} in network {network!r} cannot reach target {target}: it is not in "
                           "that network")
        return Refusal(NotFound, f"no service listens on target {target} in network {network!r}")
    net = state.networks.get(network)
    if net is None:
        return Refusal(NotFound, f"network {network!r} is not registered")
    return Admitted(attachment, service, net.vni)


@dataclass(frozen=True, slots=True)
class PoolVm:
    """A producer VM in a held pool (one claim on one VM), with what the tunnel needs to reach it."""

    vm: VmId
    address: str
    host_address: str
    fencing_token: int


@dataclass(frozen=True, slots=True)
class Use:
    member: PoolVm


@dataclass(frozen=True, slots=True)
class Grow:
    pass


@dataclass(frozen=True, slots=True)
class Wait:
    pass


Decision = Use | Grow | Wait


@dataclass
class HeldPool:
    """One lease pool as this consumer host holds it: members, which are busy, when last used.
    (`mapping.model.Pool` is the pool's record in etcd.)"""

    service: Service
    consumer: VmId
    lease_id: LeaseId
    revision: int
    members: dict[VmId, PoolVm] = field(default_factory=dict)
    busy: set[VmId] = field(default_factory=set)
    avoid: set[VmId] = field(default_factory=set)  # refused a frame: skip until the replica catches up
    growing: bool = False
    last_used: float = 0.0

    def decide(self) -> Decision:
        """Steps 4-6: the unused member taken least recently (so load spreads), else grow, else wait."""
        for vm, m in self.members.items():  # in order of last take: see take()
            if vm not in self.busy and vm not in self.avoid:
                return Use(m)
        if not self.growing and len(self.members) < self.service.policy.max_pool:
            return Grow()
        return Wait()

    def take(self, member: PoolVm, now: float) -> None:
        self.busy.add(member.vm)
        self.last_used = now
        # to the back of the order: busy members gather there, so decide() finds a free one early
        current = self.members.pop(member.vm, None)
        if current is not None:
            self.members[member.vm] = current

    def put_back(self, member: PoolVm, now: float) -> None:
        """The request on `member` is over: it is unused again (step 12)."""
        self.busy.discard(member.vm)
        self.last_used = now

    def is_idle(self, now: float) -> bool:
        return not self.busy and now - self.last_used >= self.service.policy.idle_release_s

    def needs_refill(self) -> bool:
        return len(self.members) < self.service.policy.min_pool


@dataclass(frozen=True, slots=True)
class Route:
    """Steps 7-9: inner destination rewritten to the producer VM, outer header host to host."""

    dst: str
    dst_port: int
    vni: int
    src_host: str
    dst_host: str
    fencing_token: int


def route(member: PoolVm, service: Service, vni: int, consumer_host_address: str) -> Route:
    return Route(dst=member.address, dst_port=service.port, vni=vni, src_host=consumer_host_address,
                 dst_host=member.host_address, fencing_token=member.fencing_token)


def answer_source(service: Service) -> tuple[str, int]:
    """Step 12: the consumer VM sees the answer come from the target virtual address."""
    return service.vip, service.port


def members_from_state(state: ClusterState, lease_id: LeaseId) -> dict[VmId, PoolVm]:
    """The pool's members as the replica shows them: the claims' mirrors under the pool, each with
    its producer host's address (the consumer host's replica holds no VM records)."""
    members = {}
    for vm in state.members_by_lease.get(lease_id, ()):
        if (member := pool_vm(state, state.members[vm])) is not None:
            members[vm] = member
    return members


def pool_vm(state: ClusterState, claim: Claim) -> PoolVm | None:
    """A member as the data path routes to it, or None while its producer host is not registered."""
    host = state.hosts.get(claim.host_id)
    if host is None:
        return None
    return PoolVm(claim.vm, claim.vm.partition("/")[2], host.address, claim.revision)

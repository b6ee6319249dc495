"""The registry process (`leasenet registry`): the leasing agent and the inspection API over gRPC.
Reads come from the replica; only grants, grows, renewals and releases reach etcd."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc.aio
from google.protobuf.message import Message

from wire import metrics, version
from wire.lifecycle import Step, cancel_all, shut_down
from wire.rpc import PAGE_BUDGET_BYTES, Server, edge, edge_counting
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc
from mapping import keys, scopes
from mapping.config import ClusterConfig
from mapping.liveness import DuplicateHost, Liveness
from registry.authz import ANYONE, Caller, lessee, may_inspect, on_behalf, sees_fencing_tokens
from registry import requests
from registry.ownership import Ownership, forwarded_for, liveness
from registry.convert import host_to_pb, lease_to_pb, service_to_pb, vm_to_pb
from wire.errors import InvalidRequest, LeasenetError, NotFound, Status
from wire.tls import TlsMaterial, peer_identity
from wire.verdict import Refusal
from wire.version import Protocol
from registry import audit, callstream
from registry.leasing import ClaimCollector, LeaseView, LeasingAgent, describe
from registry.watchers import Backlog, Watchers, WatchLimits
from registry.paging import page_request, take_page
from mapping.model import ConsumerRef, HostId, HostKind, LeaseId, Pool, Record, VmId, parse_lease_hex
from mapping.replica import Replica
from mapping.state import ClusterState
from mapping.store import Store

log = logging.getLogger(__name__)
KIND = "registry"
F = TypeVar("F", bound=Callable[..., Any])

T = TypeVar("T")
Remaining = Callable[[], float | None]  # a call's time left, in seconds (None: no deadline)


def _lease_id(text: str) -> LeaseId:
    if len(text) > 16:  # 64 bits in hex
        raise InvalidRequest(f"lease id is {len(text)} characters long; an etcd lease id has at most 16 hex digits")
    try:
        return parse_lease_hex(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


# the registry's own trouble (etcd down, a bug), as opposed to a refusal of the caller's request
FAULTS = frozenset({Status.UNAVAILABLE, Status.INTERNAL, Status.UNKNOWN, Status.DEADLINE_EXCEEDED})


def counted(op: str) -> Callable[[F], F]:
    """Count a leasing call in leasenet_lease_operations_total{op,result}; time successful grants."""
    def wrap(method: F) -> F:
        @functools.wraps(method)
        async def call(self: Any, *args: Any) -> Any:
            start, result = time.perf_counter(), "error"
            try:
                response = await method(self, *args)
                result = "ok"
                return response
            except LeasenetError as exc:
                result = "conflict" if exc.code is Status.ABORTED else "error" if exc.code in FAULTS else "refused"
                raise
            finally:
                metrics.LEASE_OPERATIONS.labels(op, result).inc()
                if op == "grant" and result == "ok":
                    metrics.GRANT_DURATION.observe(time.perf_counter() - start)
        return call  # type: ignore[return-value]
    return wrap


async def caller_of(context: grpc.aio.ServicerContext, insecure: bool, metadata: Any = None) -> Caller:
    """Who is calling: the certificate's identity, or ANYONE on a plaintext (--insecure) registry;
    every call starts here, so our version goes back here (initial metadata) and a caller that
    speaks no leasing protocol version in common with us is refused (VersionMismatch). `metadata`:
    the call's, when the caller read it already (grpc builds it anew at each reading)."""
    caller = ANYONE if insecure else peer_identity(context)
    await context.send_initial_metadata(version.metadata())
    refused = version.check_peer(Protocol.LEASING, metadata or context.invocation_metadata(), "the registry",
                                 "its caller" if caller is ANYONE or caller is None else str(caller))
    if refused is not None:
        raise refused.exception()
    return caller


def _lease_pb(result: LeaseView | pb.Lease) -> pb.Lease:
    """Our own grant's view, or the owner's answer to a forwarded call, as it goes out."""
    return result if isinstance(result, pb.Lease) else lease_to_pb(result)


def audit_name(text: str) -> str:
    """A requested pool's name for an audit line: bounded, since it is logged before it is checked."""
    return text if len(text) <= 200 else text[:200] + "..."


class LeasingServicer(pb_grpc.LeasingServicer):
    """Serves consumer hosts, each for its own pools only (registry/authz.py); `insecure`: no
    certificates, so the consumer host a request names is believed. Grants and grows of a service
    another registry owns go to that owner (`ownership`), unless they were forwarded here already."""

    def __init__(self, agent: LeasingAgent, *, insecure: bool = False, ownership: Ownership | None = None) -> None:
        self.agent = agent
        self.insecure = insecure
        self.ownership = ownership
        self.draining = asyncio.Event()  # set when we stop taking calls: streams answer UNAVAILABLE

    async def _caller(self, context: grpc.aio.ServicerContext) -> tuple[Caller, bool]:
        """Whom the call is for, and whether another registry forwarded it (then it is served here)."""
        metadata = context.invocation_metadata()
        stated = forwarded_for(metadata)
        caller = on_behalf(await caller_of(context, self.insecure, metadata), stated)
        if isinstance(caller, Refusal):
            raise caller.exception()
        return caller, stated is not None

    async def _at_owner(self, service: str, method: str, request: object, caller: Caller, forwarded: bool,
                        remaining: Remaining) -> pb.Lease | None:
        if forwarded or self.ownership is None or (owner := self.ownership.elsewhere(service)) is None:
            return None
        return await self.ownership.forward(owner, method, request, caller, remaining())

    # Each leasing call's work is one method over (request, caller, forwarded, remaining), served
    # by the unary method of its name and by the Calls stream (registry/callstream.py) alike.
    @edge_counting(KIND)  # refusals counted here, by the reason the leasing agent gave
    async def RequestLease(self, request: pb.RequestLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        caller, forwarded = await self._caller(context)
        return await self.request_lease(request, caller, forwarded, context.time_remaining)

    @edge_counting(KIND)
    async def GrowLease(self, request: pb.GrowLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        caller, forwarded = await self._caller(context)
        return await self.grow_lease(request, caller, forwarded, context.time_remaining)

    @edge_counting(KIND)
    async def ShrinkLease(self, request: pb.ShrinkLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        return await self.shrink_lease(request, await caller_of(context, self.insecure))

    @edge_counting(KIND)
    async def RenewLease(self, request: pb.LeaseRef, context: grpc.aio.ServicerContext) -> pb.RenewLeaseResponse:
        return await self.renew_lease(request, await caller_of(context, self.insecure))

    @edge_counting(KIND)
    async def ReleaseLease(self, request: pb.LeaseRef, context: grpc.aio.ServicerContext) -> pb.ReleaseLeaseResponse:
        return await self.release_lease(request, await caller_of(context, self.insecure))

    @edge  # the stream's own refusals (certificate, version); its calls' errors are answers
    async def Calls(self, calls: AsyncIterator[pb.LeasingCall],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LeasingAnswer]:
        caller, forwarded = await self._caller(context)
        async for answer in callstream.serve(self, calls, context, caller, forwarded):
            yield answer

    @counted("grant")
    async def request_lease(self, request: pb.RequestLeaseRequest, caller: Caller, forwarded: bool,
                            remaining: Remaining) -> pb.Lease:
        wanted = audit_name(f"{request.service}/{request.consumer_network}/{request.consumer_vm}")

        async def grant() -> LeaseView | pb.Lease:
            needed = ("service", "consumer_network", "consumer_vm") + (("consumer_host",) if caller is ANYONE else ())
            for field in needed:
                if not getattr(request, field):
                    raise InvalidRequest(f"RequestLease needs {field}")
            service = requests.name("service", request.service)
            network = requests.name("consumer network", request.consumer_network)
            address = requests.address("consumer VM address", request.consumer_vm)
            if request.consumer_host:
                requests.name("consumer host", request.consumer_host)
            avoid = requests.host_addresses(request.avoid_hosts)
            host = lessee(caller, request.consumer_host)
            if isinstance(host, Refusal):
                raise host.exception()
            request.consumer_host = host
            answer = await self._at_owner(service, "RequestLease", request, caller, forwarded, remaining)
            if answer is not None:
                return answer
            return await self.agent.request_lease(ConsumerRef(network, address, host), service, avoid)

        return _lease_pb(await self._audited("grant", caller, None, grant(), wanted=wanted))

    @counted("grow")
    async def grow_lease(self, request: pb.GrowLeaseRequest, caller: Caller, forwarded: bool,
                         remaining: Remaining) -> pb.Lease:
        lease_id = _lease_id(request.lease_id)
        avoid = requests.host_addresses(request.avoid_hosts)

        async def grow() -> LeaseView | pb.Lease:
            pool = self.agent.state.pools_by_lease.get(lease_id)
            answer = None if pool is None else await self._at_owner(pool.service, "GrowLease", request, caller,
                                                                     forwarded, remaining)
            if answer is not None:
                return answer
            return await self.agent.grow_lease(lease_id, request.count or 1, request.min_revision, avoid, caller=caller)

        return _lease_pb(await self._audited("grow", caller, lease_id, grow()))

    @counted("shrink")
    async def shrink_lease(self, request: pb.ShrinkLeaseRequest, caller: Caller) -> pb.Lease:
        lease_id = _lease_id(request.lease_id)
        vms = [VmId(v) for v in requests.vm_ids(request.vm_ids)]
        view = await self._audited("shrink", caller, lease_id, self.agent.shrink_lease(lease_id, vms, caller=caller),
                                   vms=vms)
        return lease_to_pb(view)

    @counted("renew")
    async def renew_lease(self, request: pb.LeaseRef, caller: Caller) -> pb.RenewLeaseResponse:
        lease_id = _lease_id(request.lease_id)
        ttl = await self._audited("renew", caller, lease_id, self.agent.renew_lease(lease_id, caller=caller),
                                  failures_only=True)
        return pb.RenewLeaseResponse(ttl_s=ttl)

    @counted("release")
    async def release_lease(self, request: pb.LeaseRef, caller: Caller) -> pb.ReleaseLeaseResponse:
        lease_id = _lease_id(request.lease_id)
        await self._audited("release", caller, lease_id, self.agent.release_lease(lease_id, caller=caller))
        return pb.ReleaseLeaseResponse()

    async def _audited(self, action: str, caller: Caller, lease_id: LeaseId | None, work: Awaitable[T], *,
                       wanted: str = "", vms: list[VmId] | None = None, failures_only: bool = False) -> T:
        """Run a leasing call and write its audit line (registry/audit.py): the pool as it was before
        the call (a release removes it), else the one granted, else `wanted`; the VMs given back
        (`vms`), else the lease's members after the call."""
        before = self.agent.state.pools_by_lease.get(lease_id) if lease_id is not None else None
        try:
            result = await work
        except LeasenetError as exc:
            audit.record(audit.line(action, caller, audit.pool_name(before) or wanted, lease_id, vms or (), exc))
            raise
        if not failures_only and not isinstance(result, pb.Lease):  # a forwarded call: the owner audits it
            view = result if isinstance(result, LeaseView) else None
            pool = view.pool if view is not None else before
            members = vms if vms is not None else [m.vm.vm_id for m in view.members] if view is not None else ()
            audit.record(audit.line(action, caller, audit.pool_name(pool) or wanted,
                                    pool.lease_id if pool is not None else lease_id, members))
        return result


class InspectionServicer(pb_grpc.InspectionServicer):
    """Read-only, for any certificate from the cluster CA; fencing tokens only for operators and
    registries (registry/authz.py). `insecure`: no certificates, everyone reads everything."""

    def __init__(self, replica: Replica, *, insecure: bool = False, watch: WatchLimits = WatchLimits()) -> None:
        self.replica = replica
        self.insecure = insecure
        self.watch = watch
        self.watchers = Watchers(watch.max_watchers)

    @property
    def state(self):  # noqa: ANN201 - ClusterState
        return self.replica.state

    async def _reader(self, context: grpc.aio.ServicerContext) -> Caller:
        caller = await caller_of(context, self.insecure)
        if (denied := may_inspect(caller)) is not None:
            raise denied.exception()
        return caller

    @edge
    async def ListHosts(self, request: pb.ListHostsRequest, context: grpc.aio.ServicerContext) -> pb.ListHostsResponse:
        await self._reader(context)
        if request.kind and request.kind not in {k.value for k in HostKind}:
            raise InvalidRequest(f"host kind {request.kind!r} is not 'producer', 'consumer' or 'registry'")
        hosts = [h for h in self.state.hosts.values() if not request.kind or h.kind.value == request.kind]
        page, token = _page(request, "ListHosts", [(h.host_id, h) for h in hosts], host_to_pb)
        return pb.ListHostsResponse(hosts=page, next_page_token=token)

    @edge
    async def GetHost(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.Host:
        await self._reader(context)
        host = self.state.hosts.get(HostId(request.id))
        if host is None:
            raise NotFound(f"host {request.id!r} is not registered")
        return host_to_pb(host)

    @edge
    async def ListVms(self, request: pb.ListVmsRequest, context: grpc.aio.ServicerContext) -> pb.ListVmsResponse:
        await self._reader(context)
        vms = [(vm_id, vm) for vm_id, vm in self.state.vms.items()
               if (not request.service or vm.service == request.service)
               and (not request.host_id or vm.host_id == request.host_id)
               and (not request.free_only or vm_id not in self.state.claims)]
        page, token = _page(request, "ListVms", vms, lambda v: vm_to_pb(self.state, v))
        return pb.ListVmsResponse(vms=page, next_page_token=token)

    @edge
    async def GetVm(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.ProducerVm:
        await self._reader(context)
        vm = self.state.vms.get(request.id)
        if vm is None:
            raise NotFound(f"producer VM {request.id!r} is not registered (ids are network/address)")
        return vm_to_pb(self.state, vm)

    @edge
    async def ListServices(self, request: pb.ListServicesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListServicesResponse:
        await self._reader(context)
        page, token = _page(request, "ListServices", self.state.services.items(),
                            lambda s: service_to_pb(self.state, s))
        return pb.ListServicesResponse(services=page, next_page_token=token)

    @edge
    async def GetService(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.Service:
        await self._reader(context)
        service = self.state.services.get(request.id)
        if service is None:
            raise NotFound(f"service {request.id!r} is not registered")
        return service_to_pb(self.state, service)

    def _matches(self, pool: Pool, request: pb.ListLeasesRequest) -> bool:
        if request.service and pool.service != request.service:
            return False
        if request.consumer_vm and request.consumer_vm not in (pool.consumer_vm, pool.consumer_vm.partition("/")[2]):
            return False
        if request.consumer_host and pool.consumer_host != request.consumer_host:
            return False
        if request.producer_host:
            members = self.state.claims_by_lease.get(pool.lease_id, ())
            return any(self.state.vms[m].host_id == request.producer_host for m in members if m in self.state.vms)
        return True

    @edge
    async def ListLeases(self, request: pb.ListLeasesRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListLeasesResponse:
        tokens = sees_fencing_tokens(await self._reader(context))
        pools = [(f"{p.revision:020d}/{p.lease_id:016x}", p) for p in self.state.pools.values()
                 if self._matches(p, request)]
        page, token = _page(request, "ListLeases", pools, lambda p: lease_to_pb(describe(self.state, p), tokens))
        return pb.ListLeasesResponse(leases=page, revision=self.replica.revision, next_page_token=token)

    @edge
    async def GetLease(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        tokens = sees_fencing_tokens(await self._reader(context))
        lease_id = _lease_id(request.id)
        pool = self.state.pools_by_lease.get(lease_id)
        if pool is None:
            raise NotFound(f"lease {request.id} does not exist (expired, released, or never granted)")
        return lease_to_pb(describe(self.state, pool), tokens)

    @edge_counting(KIND)
    async def WatchLeases(self, request: pb.WatchLeasesRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LeaseEvent]:
        tokens = sees_fencing_tokens(await self._reader(context))
        with self.watchers.admit():
            async for event in self._watch(request, tokens):
                yield event

    async def _watch(self, request: pb.WatchLeasesRequest, tokens: bool) -> AsyncIterator[pb.LeaseEvent]:
        changes: Backlog[tuple[LeaseId, Pool | None, Pool | None, int]] = Backlog(self.watch.backlog)

        def on_change(key: str, old: Record | None, new: Record | None, revision: int) -> None:
            if not key.startswith((keys.POOLS, keys.CLAIMS)):
                return
            lease_id = getattr(new or old, "lease_id")
            changes.offer((lease_id, old if isinstance(old, Pool) else None,
                           new if isinstance(new, Pool) else None, revision))

        unsubscribe = self.replica.subscribe(on_change)
        try:
            for pool in sorted(self.state.pools.values(), key=lambda p: p.revision):
                if not request.service or pool.service == request.service:
                    yield pb.LeaseEvent(type=pb.LeaseEvent.EXISTING,
                                        lease=lease_to_pb(describe(self.state, pool), tokens),
                                        revision=self.replica.revision)
            yield pb.LeaseEvent(type=pb.LeaseEvent.SYNCED, revision=self.replica.revision)
            while True:
                for event in _coalesce(await changes.next_batch(), self.state, tokens):
                    if not request.service or event.lease.service == request.service:
                        yield event
        finally:
            unsubscribe()


def _page(request: Any, what: str, keyed: Iterable[tuple[str, T]],
          convert: Callable[[T], Message]) -> tuple[list[Message], str]:
    """One page of a List call (registry/paging.py), the token tied to the request's filters."""
    filters = type(request)()
    filters.CopyFrom(request)
    filters.ClearField("page_size")
    filters.ClearField("page_token")
    wanted = page_request(request.page_size, request.page_token, filters.SerializeToString(deterministic=True), what)
    return take_page(keyed, convert, lambda m: m.ByteSize(), wanted, PAGE_BUDGET_BYTES)



def _coalesce(changes: list[tuple[LeaseId, Pool | None, Pool | None, int]], state,  # noqa: ANN001
              tokens: bool) -> list[pb.LeaseEvent]:
    """One event per lease for a burst of key changes (a grant writes the pool and its claims at once)."""
    kinds: dict[LeaseId, tuple[int, Pool | None, int]] = {}
    for lease_id, old, new, revision in changes:
        kind, ended, _ = kinds.get(lease_id, (pb.LeaseEvent.CHANGED, None, 0))
        if new is not None:
            kind = pb.LeaseEvent.GRANTED
        elif old is not None:
            kind, ended = pb.LeaseEvent.ENDED, old
        kinds[lease_id] = (kind, ended, revision)
    events = []
    for lease_id, (kind, ended, revision) in kinds.items():
        pool = state.pools_by_lease.get(lease_id)
        if kind == pb.LeaseEvent.ENDED or pool is None:
            if ended is None:
                continue  # claims of a lease we never saw: nothing to report
            view = describe(state, ended) if pool is None else describe(state, pool)
            events.append(pb.LeaseEvent(type=pb.LeaseEvent.ENDED, lease=lease_to_pb(view, tokens), revision=revision))
        else:
            events.append(pb.LeaseEvent(type=kind, lease=lease_to_pb(describe(state, pool), tokens),
                                        revision=revision))
    return events


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    listen: str
    cluster: ClusterConfig | None = None
    tls: TlsMaterial | None = field(default=None, repr=False)  # None: plaintext (--insecure)
    watch: WatchLimits = WatchLimits()
    registry_id: str = "registry"
    advertise: str | None = None  # the address other processes reach us at (default: the bound one)
    sharding: bool = True  # share the services out among the live registries (registry/ownership.py)
    liveness_ttl_s: int = 3  # how soon our share moves to the others when we die


def live_hosts(state: ClusterState) -> dict[tuple[str, ...], float]:
    """For leasenet_live_hosts: registered hosts by kind (every kind, 0 when none)."""
    counts: dict[tuple[str, ...], float] = {(kind.value,): 0 for kind in HostKind}
    for host in state.hosts.values():
        counts[(host.kind.value,)] += 1
    return counts


async def publish_cluster_config(store: Store, replica: Replica, cluster: ClusterConfig) -> None:
    """Write networks and services unless they are already there as configured (replicas agree)."""
    for record in [*cluster.networks, *cluster.services]:
        key = keys.key_of(record)
        if replica.state.get(key) != record:
            await store.put(key, keys.encode(record))


async def _registered(registration: Liveness) -> bool:
    """Take our share. A live registry with our id refuses us (DuplicateHost: one id, one live
    process, as for hosts); another refusal (e.g. an etcd whose registry role predates
    `hosts/registry/`) leaves this registry serving every call that reaches it, as before sharding,
    rather than not at all."""
    try:
        await registration.register()
        return True
    except DuplicateHost:
        raise
    except LeasenetError as exc:
        log.error("registry %s takes no share of the services: cannot register: %s", registration.host_id, exc)
        return False


async def stop_taking_calls(server: Server, leasing: LeasingServicer) -> None:
    await server.set_serving(False)
    leasing.draining.set()


async def serve(config: RegistryConfig, store: Store, *, stop: asyncio.Event,
                ready: Callable[[str], None] | None = None) -> None:
    """A registry until `stop` is set: replica and claim collector in one task group; in `finally`,
    stop serving and let the calls in flight finish (a consumer host fails over meanwhile)."""
    replica = Replica(store, skip=scopes.skipped(HostKind.REGISTRY))
    agent = LeasingAgent(store, replica)
    collector = ClaimCollector(store, replica)
    ownership = Ownership(config.registry_id, replica, config.tls, enabled=config.sharding)
    server = Server(config.listen, config.tls)
    insecure = config.tls is None
    leasing = LeasingServicer(agent, insecure=insecure, ownership=ownership)
    server.add(pb_grpc.add_LeasingServicer_to_server, leasing, "leasenet.v1.Leasing")
    server.add(pb_grpc.add_InspectionServicer_to_server, InspectionServicer(replica, insecure=insecure, watch=config.watch),
               "leasenet.v1.Inspection")
    keep_alive: asyncio.Task[None] | None = None
    unwatch = metrics.LIVE_HOSTS.watch(lambda: live_hosts(replica.state))
    async with asyncio.TaskGroup() as tasks:
        background = [tasks.create_task(replica.run(), name="replica")]
        try:
            await replica.synced.wait()
            if config.cluster is not None:
                await publish_cluster_config(store, replica, config.cluster)
            background.append(tasks.create_task(collector.run(), name="claim-collector"))
            # bound (our record names the address) but not serving until registered: a second live
            # registry with our id is refused before it serves anything (and even without sharding)
            address = await server.start(serving=False)
            registration = liveness(store, config.registry_id, config.advertise or address, config.liveness_ttl_s)
            if await _registered(registration):
                keep_alive = tasks.create_task(registration.keep_alive(), name="liveness")
                background.append(keep_alive)
            await server.set_serving(True)
            log.info("registry %s serving on %s", config.registry_id, address)
            if ready is not None:
                ready(address)
            await stop.wait()
        finally:
            serving = bool(server.port)
            await shut_down([
                # NOT_SERVING first: consumer hosts (health-aware channels) send their next calls to
                # another registry while we hand our share over (the others take it at once instead
                # of after our TTL), so no call is pending in gRPC when the server stops
                Step("stop taking calls", lambda: stop_taking_calls(server, leasing), 1.0) if serving else None,
                Step("deregister", lambda: registration.deregister(keep_alive), 1.0) if keep_alive else None,
                Step("let the calls in flight finish", lambda: server.stop(1.0), 2.0) if serving else None,
                Step("close the channels to the other registries", ownership.close, 1.0),
            ])
            cancel_all(background)
            unwatch()

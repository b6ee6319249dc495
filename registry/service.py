"""The registry process (`leasenet registry`): the leasing agent and the inspection API over gRPC.
Reads come from the replica; only grants, grows, renewals and releases reach etcd."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc.aio

from wire.lifecycle import Step, cancel_all, shut_down
from wire.rpc import Server, edge
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc
from mapping import keys
from mapping.config import ClusterConfig
from registry.authz import ANYONE, Caller, Deny, lessee, may_inspect, sees_fencing_tokens
from registry.convert import host_to_pb, lease_to_pb, service_to_pb, vm_to_pb
from wire.errors import InvalidRequest, LeasenetError, NotFound
from wire.tls import TlsMaterial, peer_identity
from registry import audit
from registry.leasing import ClaimCollector, LeaseView, LeasingAgent, describe
from mapping.model import ConsumerRef, HostId, HostKind, LeaseId, Pool, Record, VmId, parse_lease_hex
from mapping.replica import Replica
from mapping.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


def _lease_id(text: str) -> LeaseId:
    try:
        return parse_lease_hex(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def caller_of(context: grpc.aio.ServicerContext, insecure: bool) -> Caller:
    """Who is calling: the certificate's identity, or ANYONE on a plaintext (--insecure) registry."""
    return ANYONE if insecure else peer_identity(context)


class LeasingServicer(pb_grpc.LeasingServicer):
    """Serves consumer hosts, each for its own pools only (registry/authz.py); `insecure`: no
    certificates, so the consumer host a request names is believed."""

    def __init__(self, agent: LeasingAgent, *, insecure: bool = False) -> None:
        self.agent = agent
        self.insecure = insecure

    @edge
    async def RequestLease(self, request: pb.RequestLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        caller = caller_of(context, self.insecure)

        async def grant() -> LeaseView:
            needed = ("service", "consumer_network", "consumer_vm") + (("consumer_host",) if caller is ANYONE else ())
            for field in needed:
                if not getattr(request, field):
                    raise InvalidRequest(f"RequestLease needs {field}")
            host = lessee(caller, request.consumer_host)
            if isinstance(host, Deny):
                raise host.exception()
            consumer = ConsumerRef(request.consumer_network, request.consumer_vm, host)
            return await self.agent.request_lease(consumer, request.service, frozenset(request.avoid_hosts))

        wanted = f"{request.service}/{request.consumer_network}/{request.consumer_vm}"
        return lease_to_pb(await self._audited("grant", caller, None, grant(), wanted=wanted))

    @edge
    async def GrowLease(self, request: pb.GrowLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        caller, lease_id = caller_of(context, self.insecure), _lease_id(request.lease_id)
        view = await self._audited("grow", caller, lease_id, self.agent.grow_lease(
            lease_id, request.count or 1, request.min_revision, frozenset(request.avoid_hosts), caller=caller))
        return lease_to_pb(view)

    @edge
    async def ShrinkLease(self, request: pb.ShrinkLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        caller, lease_id = caller_of(context, self.insecure), _lease_id(request.lease_id)
        vms = [VmId(v) for v in request.vm_ids]
        view = await self._audited("shrink", caller, lease_id, self.agent.shrink_lease(lease_id, vms, caller=caller),
                                   vms=vms)
        return lease_to_pb(view)

    @edge
    async def RenewLease(self, request: pb.LeaseRef, context: grpc.aio.ServicerContext) -> pb.RenewLeaseResponse:
        caller, lease_id = caller_of(context, self.insecure), _lease_id(request.lease_id)
        ttl = await self._audited("renew", caller, lease_id, self.agent.renew_lease(lease_id, caller=caller),
                                  failures_only=True)
        return pb.RenewLeaseResponse(ttl_s=ttl)

    @edge
    async def ReleaseLease(self, request: pb.LeaseRef, context: grpc.aio.ServicerContext) -> pb.ReleaseLeaseResponse:
        caller, lease_id = caller_of(context, self.insecure), _lease_id(request.lease_id)
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
        if not failures_only:
            view = result if isinstance(result, LeaseView) else None
            pool = view.pool if view is not None else before
            members = vms if vms is not None else [m.vm.vm_id for m in view.members] if view is not None else ()
            audit.record(audit.line(action, caller, audit.pool_name(pool) or wanted,
                                    pool.lease_id if pool is not None else lease_id, members))
        return result


class InspectionServicer(pb_grpc.InspectionServicer):
    """Read-only, for any certificate from the cluster CA; fencing tokens only for operators and
    registries (registry/authz.py). `insecure`: no certificates, everyone reads everything."""

    def __init__(self, replica: Replica, *, insecure: bool = False) -> None:
        self.replica = replica
        self.insecure = insecure

    @property
    def state(self):  # noqa: ANN201 - ClusterState
        return self.replica.state

    def _reader(self, context: grpc.aio.ServicerContext) -> Caller:
        caller = caller_of(context, self.insecure)
        if (denied := may_inspect(caller)) is not None:
            raise denied.exception()
        return caller

    @edge
    async def ListHosts(self, request: pb.ListHostsRequest, context: grpc.aio.ServicerContext) -> pb.ListHostsResponse:
        self._reader(context)
        if request.kind and request.kind not in {k.value for k in HostKind}:
            raise InvalidRequest(f"host kind {request.kind!r} is not 'producer' or 'consumer'")
        hosts = [h for h in self.state.hosts.values() if not request.kind or h.kind.value == request.kind]
        return pb.ListHostsResponse(hosts=[host_to_pb(h) for h in sorted(hosts, key=lambda h: h.host_id)])

    @edge
    async def GetHost(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.Host:
        self._reader(context)
        host = self.state.hosts.get(HostId(request.id))
        if host is None:
            raise NotFound(f"host {request.id!r} is not registered")
        return host_to_pb(host)

    @edge
    async def ListVms(self, request: pb.ListVmsRequest, context: grpc.aio.ServicerContext) -> pb.ListVmsResponse:
        self._reader(context)
        vms = [vm for vm in self.state.vms.values()
               if (not request.service or vm.service == request.service)
               and (not request.host_id or vm.host_id == request.host_id)
               and (not request.free_only or vm.vm_id not in self.state.claims)]
        return pb.ListVmsResponse(vms=[vm_to_pb(self.state, vm) for vm in sorted(vms, key=lambda v: v.vm_id)])

    @edge
    async def GetVm(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.ProducerVm:
        self._reader(context)
        vm = self.state.vms.get(request.id)
        if vm is None:
            raise NotFound(f"producer VM {request.id!r} is not registered (ids are network/address)")
        return vm_to_pb(self.state, vm)

    @edge
    async def ListServices(self, request: pb.ListServicesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListServicesResponse:
        self._reader(context)
        services = sorted(self.state.services.values(), key=lambda s: s.name)
        return pb.ListServicesResponse(services=[service_to_pb(self.state, s) for s in services])

    @edge
    async def GetService(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.Service:
        self._reader(context)
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
            members = self.state.members_by_lease.get(pool.lease_id, ())
            return any(self.state.vms[m].host_id == request.producer_host for m in members if m in self.state.vms)
        return True

    @edge
    async def ListLeases(self, request: pb.ListLeasesRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListLeasesResponse:
        tokens = sees_fencing_tokens(self._reader(context))
        pools = sorted((p for p in self.state.pools.values() if self._matches(p, request)), key=lambda p: p.revision)
        return pb.ListLeasesResponse(leases=[lease_to_pb(describe(self.state, p), tokens) for p in pools],
                                     revision=self.replica.revision)

    @edge
    async def GetLease(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        tokens = sees_fencing_tokens(self._reader(context))
        lease_id = _lease_id(request.id)
        pool = self.state.pools_by_lease.get(lease_id)
        if pool is None:
            raise NotFound(f"lease {request.id} does not exist (expired, released, or never granted)")
        return lease_to_pb(describe(self.state, pool), tokens)

    @edge
    async def WatchLeases(self, request: pb.WatchLeasesRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LeaseEvent]:
        tokens = sees_fencing_tokens(self._reader(context))
        changes: asyncio.Queue[tuple[LeaseId, Pool | None, Pool | None, int]] = asyncio.Queue()

        def on_change(key: str, old: Record | None, new: Record | None, revision: int) -> None:
            if not key.startswith((keys.POOLS, keys.CLAIMS)):
                return
            lease_id = getattr(new or old, "lease_id")
            changes.put_nowait((lease_id, old if isinstance(old, Pool) else None,
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
                for event in _coalesce([await changes.get()] + _drain(changes), self.state, tokens):
                    if not request.service or event.lease.service == request.service:
                        yield event
        finally:
            unsubscribe()


def _drain(queue: asyncio.Queue) -> list:  # type: ignore[type-arg]
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


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


async def publish_cluster_config(store: Store, replica: Replica, cluster: ClusterConfig) -> None:
    """Write networks and services unless they are already there as configured (replicas agree)."""
    for record in [*cluster.networks, *cluster.services]:
        key = keys.key_of(record)
        if replica.state.get(key) != record:
            await store.put(key, keys.encode(record))


async def serve(config: RegistryConfig, store: Store, *, stop: asyncio.Event,
                ready: Callable[[str], None] | None = None) -> None:
    """A registry until `stop` is set: replica and claim collector in one task group; in `finally`,
    stop serving and let the calls in flight finish (a consumer host fails over meanwhile)."""
    replica = Replica(store)
    agent = LeasingAgent(store, replica)
    collector = ClaimCollector(store, replica)
    server = Server(config.listen, config.tls)
    insecure = config.tls is None
    server.add(pb_grpc.add_LeasingServicer_to_server, LeasingServicer(agent, insecure=insecure), "leasenet.v1.Leasing")
    server.add(pb_grpc.add_InspectionServicer_to_server, InspectionServicer(replica, insecure=insecure),
               "leasenet.v1.Inspection")
    async with asyncio.TaskGroup() as tasks:
        background = [tasks.create_task(replica.run(), name="replica")]
        try:
            await replica.synced.wait()
            if config.cluster is not None:
                await publish_cluster_config(store, replica, config.cluster)
            background.append(tasks.create_task(collector.run(), name="claim-collector"))
            address = await server.start()
            log.info("registry serving on %s", address)
            if ready is not None:
                ready(address)
            await stop.wait()
        finally:
            serving = bool(server.port)
            await shut_down([
                Step("stop taking calls", lambda: server.set_serving(False), 1.0) if serving else None,
                Step("let the calls in flight finish", lambda: server.stop(1.0), 2.0) if serving else None,
            ])
            cancel_all(background)

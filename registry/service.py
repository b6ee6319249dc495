"""The registry process (`leasenet registry`): the leasing agent and the inspection API over gRPC.
Reads come from the replica; only grants, grows, renewals and releases reach etcd."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc.aio

from wire import metrics
from wire.lifecycle import Step, cancel_all, shut_down
from wire.rpc import Server, edge
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc
from mapping import keys
from mapping.config import ClusterConfig
from registry.authz import ANYONE, Caller, Deny, lessee, may_inspect, sees_fencing_tokens
from registry.convert import host_to_pb, lease_to_pb, service_to_pb, vm_to_pb
from wire.errors import InvalidRequest, LeasenetError, NotFound, Status
from wire.tls import TlsMaterial, peer_identity
from registry.leasing import ClaimCollector, LeasingAgent, describe
from mapping.model import ConsumerRef, HostId, HostKind, LeaseId, Pool, Record, VmId, parse_lease_hex
from mapping.replica import Replica
from mapping.state import ClusterState
from mapping.store import Store

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _lease_id(text: str) -> LeaseId:
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
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start, result = time.perf_counter(), "error"
            try:
                response = await method(self, request, context)
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
    @counted("grant")
    async def RequestLease(self, request: pb.RequestLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        caller = caller_of(context, self.insecure)
        needed = ("service", "consumer_network", "consumer_vm") + (("consumer_host",) if caller is ANYONE else ())
        for field in needed:
            if not getattr(request, field):
                raise InvalidRequest(f"RequestLease needs {field}")
        host = lessee(caller, request.consumer_host)
        if isinstance(host, Deny):
            raise host.exception()
        consumer = ConsumerRef(request.consumer_network, request.consumer_vm, host)
        return lease_to_pb(await self.agent.request_lease(consumer, request.service, frozenset(request.avoid_hosts)))

    @edge
    @counted("grow")
    async def GrowLease(self, request: pb.GrowLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        view = await self.agent.grow_lease(_lease_id(request.lease_id), request.count or 1, request.min_revision,
                                           frozenset(request.avoid_hosts), caller=caller_of(context, self.insecure))
        return lease_to_pb(view)

    @edge
    @counted("shrink")
    async def ShrinkLease(self, request: pb.ShrinkLeaseRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        view = await self.agent.shrink_lease(_lease_id(request.lease_id), [VmId(v) for v in request.vm_ids],
                                             caller=caller_of(context, self.insecure))
        return lease_to_pb(view)

    @edge
    @counted("renew")
    async def RenewLease(self, request: pb.LeaseRef, context: grpc.aio.ServicerContext) -> pb.RenewLeaseResponse:
        ttl = await self.agent.renew_lease(_lease_id(request.lease_id), caller=caller_of(context, self.insecure))
        return pb.RenewLeaseResponse(ttl_s=ttl)

    @edge
    @counted("release")
    async def ReleaseLease(self, request: pb.LeaseRef, context: grpc.aio.ServicerContext) -> pb.ReleaseLeaseResponse:
        await self.agent.release_lease(_lease_id(request.lease_id), caller=caller_of(context, self.insecure))
        return pb.ReleaseLeaseResponse()


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
    unwatch = metrics.LIVE_HOSTS.watch(lambda: live_hosts(replica.state))
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
            unwatch()

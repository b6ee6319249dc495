"""The consumer host's client for the leasing agents: several registry replicas, failing over on
UNAVAILABLE with bounded, jittered retries (tenacity). Every leasing call is safe to repeat on
another replica: a repeated RequestLease finds the pool the first one created.

A new lease asks each agent at most once: when they all answer UNAVAILABLE (etcd unreachable, or
no agent reachable), going round again only spends the request's deadline (SPEC §6: new leases
fail fast with etcd down).

Calls go on one stream per registry (consumer_host/leasing_stream.py: many in flight, a fraction of
a unary call's cost each); a registry without it is asked with the unary methods.

Grants and grows go first to the registry owning the service (`owner`: mapping/ownership.py over
our replica), so that they are not forwarded; a registry reached by mistake forwards them itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from consumer_host.leasing_stream import LeasingStream
from wire import rpc, version
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc
from wire.errors import LeasenetError, Status, StoreUnavailable, Unavailable
from wire.tls import Kind, TlsMaterial

CALL_TIMEOUT_S = 3.0


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, Unavailable)


class RegistryClient:
    def __init__(self, addresses: Sequence[str], tls: TlsMaterial | None = None,
                 owner: Callable[[str], str | None] | None = None) -> None:
        self.addresses = list(addresses)
        self._owner = owner  # service -> the address of the registry owning it, if known
        self._tls = tls  # ours, presented to the registries; None: plaintext (--insecure)
        self._stubs: list[pb_grpc.LeasingStub] = []
        self._streams: list[LeasingStream] = []
        self._channels: list[grpc.aio.Channel] = []
        self._current = 0
        self.calls = 0

    def _stub(self, index: int | None = None) -> pb_grpc.LeasingStub:
        if not self._stubs:  # channels are created inside the running loop, on first use
            # health-aware: a registry that is draining (NOT_SERVING) gets no new call; and an address
            # naming several replicas (a swarm service) is one channel over all of them
            self._channels = [rpc.channel(a, self._tls, Kind.REGISTRY, rpc.health_aware()) for a in self.addresses]
            self._stubs = [pb_grpc.LeasingStub(c) for c in self._channels]
            self._streams = [LeasingStream(s, f"leasing agent {a}") for s, a in zip(self._stubs, self.addresses)]
        return self._stubs[self._current if index is None else index]

    async def _ask(self, index: int, method: str, request: Any, timeout_s: float) -> Any:
        """One attempt at agent `index`: on its stream, else (an older registry) a unary call."""
        stub = self._stub(index)
        stream = self._streams[index]
        if stream.supported:
            try:
                return await stream.call(method, request, timeout_s)
            except LeasenetError as exc:
                if stream.supported or exc.code is not Status.UNIMPLEMENTED:
                    raise
        try:
            return await getattr(stub, method)(request, timeout=timeout_s, metadata=version.metadata())
        except grpc.aio.AioRpcError as exc:
            raise rpc.error_from_rpc(exc, f"leasing agent {self.addresses[index]}") from None

    def _owner_index(self, service: str) -> int | None:
        """Where `service`'s owner is among our addresses (it must be one we were given: we trust no
        address from etcd), or None."""
        address = self._owner(service) if self._owner is not None and service else None
        return self.addresses.index(address) if address in self.addresses else None

    async def _call(self, method: str, request: Any, timeout_s: float = CALL_TIMEOUT_S, rounds: int = 2,
                    service: str = "") -> Any:
        """`rounds`: how many times each agent may be asked before the last UNAVAILABLE is the answer.
        `service`: ask its owner first (when we know it), then fail over as usual."""
        first = self._owner_index(service)
        retrying = AsyncRetrying(stop=stop_after_attempt(rounds * len(self.addresses)),
                                 wait=wait_random_exponential(multiplier=0.05, max=0.5),
                                 retry=retry_if_exception(_is_unavailable), reraise=True)
        async for attempt in retrying:
            with attempt:
                self.calls += 1
                index = self._current if first is None else first
                first = None
                try:
                    return await self._ask(index, method, request, timeout_s)
                except LeasenetError as error:
                    if error.code in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
                        if self._current == index:  # fail over once: calls failing together must not flip back
                            self._current = (index + 1) % len(self.addresses)
                        # say which agent, and pass on its own sentence (e.g. "etcd is unavailable ..."),
                        # never grpc's text about the connection
                        agent = f"leasing agent {self.addresses[index]}"
                        said = f": {error.message}" if isinstance(error, StoreUnavailable) else ""
                        raise StoreUnavailable(f"{agent} is unavailable{said}", detail=error.detail) from None
                    raise

    async def request_lease(self, service: str, network: str, address: str, host_id: str,
                            avoid_hosts: list[str]) -> pb.Lease:
        return await self._call("RequestLease", pb.RequestLeaseRequest(
            service=service, consumer_network=network, consumer_vm=address, consumer_host=host_id,
            avoid_hosts=avoid_hosts), rounds=1, service=service)

    async def grow_lease(self, lease_id: str, count: int, min_revision: int, avoid_hosts: list[str],
                         service: str = "") -> pb.Lease:
        return await self._call("GrowLease", pb.GrowLeaseRequest(lease_id=lease_id, count=count,
                                                                 min_revision=min_revision, avoid_hosts=avoid_hosts),
                                service=service)

    async def shrink_lease(self, lease_id: str, vm_ids: list[str]) -> pb.Lease:
        return await self._call("ShrinkLease", pb.ShrinkLeaseRequest(lease_id=lease_id, vm_ids=vm_ids))

    async def renew_lease(self, lease_id: str, timeout_s: float = CALL_TIMEOUT_S) -> int:
        """`timeout_s`: per attempt; a renewal must fail over from a hung agent before the TTL runs out."""
        return int((await self._call("RenewLease", pb.LeaseRef(lease_id=lease_id), timeout_s)).ttl_s)

    async def release_lease(self, lease_id: str) -> None:
        await self._call("ReleaseLease", pb.LeaseRef(lease_id=lease_id))

    async def close(self) -> None:
        for stream in self._streams:
            await stream.close()
        for channel in self._channels:
            await channel.close()

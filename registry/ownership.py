"""The registry's side of sharing the services out (issue 12 item 5; the rule is mapping/ownership.py):
it registers itself under a liveness lease, and forwards a grant or grow for a service it does not
own to the owner, over mutual TLS as itself, naming the consumer host it read from the caller's
certificate (`FORWARDED_FOR`, checked by registry/authz.py: on_behalf). When the owner cannot be
reached, or speaks no leasing protocol version in common with us, it serves the call itself:
ownership only saves conflicts, etcd's compare-and-swap keeps the claims right either way."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from mapping.liveness import Liveness
from mapping.model import Host, HostId, HostKind
from mapping.ownership import owner, registries
from mapping.replica import Replica
from mapping.store import Store
from registry.authz import Anyone, Caller
from wire import metrics, rpc, version
from wire.errors import LeasenetError, VersionMismatch
from wire.tls import Kind, TlsMaterial
from wire.v1 import registry_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

FORWARDED_FOR = "leasenet-forwarded-for"  # metadata: the consumer host a registry forwards a call for
UNAUTHENTICATED = "*"  # what a plaintext (--insecure) registry forwards: its caller had no identity
# half the caller's deadline goes to the owner, the other half to serving it here if the owner hangs
# (a busy owner is slow, not gone: a short cap made loaded registries serve forwarded grants
# themselves, racing the owner again); a caller without a deadline gets this
FORWARD_TIMEOUT_S = 1.5
SKIP_UNREACHABLE_S = 1.0  # an owner that just failed is not tried again for this long (SIGSTOP costs a timeout)


def forwarded_for(metadata: Any) -> str | None:
    """The consumer host a call was forwarded for, or None when a client sent it directly."""
    return next((str(v) for k, v in metadata or () if k == FORWARDED_FOR), None)


class Ownership:
    """Who owns what, seen from registry `me` (whose own share is served locally), and the
    forwarding of the rest. `enabled=False` (--no-sharding): every call is served where it lands."""

    def __init__(self, me: str, replica: Replica, tls: TlsMaterial | None, *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self.replica = replica
        self.tls = tls
        self.enabled = enabled
        self.clock = clock
        self._stubs: dict[str, pb_grpc.LeasingStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._skip_until: dict[str, float] = {}
        self.forwarded = 0
        self.served_for_unreachable_owner = 0

    def elsewhere(self, service: str) -> str | None:
        """The address of `service`'s owner when it is another registry; None: serve it here."""
        if not self.enabled:
            return None
        live = registries(self.replica.state)
        chosen = owner(service, live)
        if chosen is None or chosen == self.me:
            return None
        address = live[HostId(chosen)]
        return None if self._skip_until.get(address, 0.0) > self.clock() else address

    async def forward(self, address: str, method: str, request: Any, caller: Caller,
                      time_remaining: float | None) -> Any | None:
        """The owner's answer to `request`, or None when it could not be reached (serve it here).
        A refusal from the owner (no capacity, not your pool) is its answer, raised as is."""
        stated = UNAUTHENTICATED if isinstance(caller, Anyone) or caller is None else caller.id
        timeout = FORWARD_TIMEOUT_S if time_remaining is None else time_remaining / 2
        try:
            self.forwarded += 1
            return await getattr(self._stub(address), method)(request, timeout=timeout,
                                                              metadata=((FORWARDED_FOR, stated), *version.metadata()))
        except grpc.aio.AioRpcError as exc:
            error: LeasenetError = rpc.error_from_rpc(exc, f"owner registry {address}")
            # an owner of a leasing protocol we do not share (wire/version.py) is as good as unreachable
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or isinstance(
                    error, VersionMismatch):
                why = error.message if isinstance(error, VersionMismatch) else exc.code().name
                log.warning("owner registry %s unreachable (%s); serving %s here", address, why, method)
                self._skip_until[address] = self.clock() + SKIP_UNREACHABLE_S
                self.served_for_unreachable_owner += 1
                return None
            error.reason = metrics.RELAYED  # the owner counted its refusal; passing it on is not another
            raise error from None

    def _stub(self, address: str) -> pb_grpc.LeasingStub:
        if address not in self._stubs:  # created inside the running loop, on first use
            channel = rpc.channel(address, self.tls, Kind.REGISTRY)
            self._channels.append(channel)
            self._stubs[address] = pb_grpc.LeasingStub(channel)
        return self._stubs[address]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def liveness(store: Store, me: str, address: str, ttl_s: int) -> Liveness:
    """This registry's record (`hosts/registry/<me>`, its address) under its own liveness lease: when
    it dies, its share moves to the others within `ttl_s`. As for hosts (Liveness), a restarted
    registry waits out its previous life's lease, and a second live registry given one id is refused
    (DuplicateHost) once the first has kept the record alive past its TTL: two serving under one id
    would replace each other's record, one registered owning what they would have shared."""
    return Liveness(store, HostId(me), lambda: [Host(HostId(me), HostKind.REGISTRY, address,
                                                     version=str(version.ours()))], ttl_s)

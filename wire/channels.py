"""The client side every leasenet process and command shares: channel options, a channel to one
peer (plaintext, or mutual TLS expecting a server of one kind), and the health probe. Kept apart
from wire.rpc (servers, the error edge, metrics) so that `leasenet health`, which a container's
healthcheck runs every few seconds, imports no more than a probe needs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wire import tls as wtls
from wire.limits import MAX_MESSAGE_BYTES
from wire.tls import Kind, TlsMaterial
from wire.version import METADATA_KEY

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # reconnect quickly after a peer restarts (defaults back off to minutes)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # and look the name up again soon after: a peer replaced under the same name (a swarm task) has
    # a new address, which gRPC's default 30 s between DNS resolutions would keep us from seeing
    ("grpc.dns_min_time_between_resolutions_ms", 500),
    # and give up on a lookup that gets no answer within 2 s (default 120 s): docker's DNS forwards
    # a name it does not know (a task between two lives) to servers an internal network cannot reach
    ("grpc.dns_ares_query_timeout", 2_000),
]
SERVER_KINDS = (Kind.REGISTRY, Kind.PRODUCER, Kind.CONSUMER)


def health_aware(wait_for_ready: bool = False) -> tuple[tuple[str, str], ...]:
    """Channel options for gRPC's client-side health checking (gRFC A17): the channel watches each
    server's grpc.health.v1 and sends no new call to one that reports NOT_SERVING (round_robin over
    every address the name resolves to; pick_first ignores health). A server that says NOT_SERVING
    a moment before it stops (a draining host) then has no call pending in gRPC when it stops,
    which gRPC would answer CANCELLED though the call never reached it (grpc/grpc#41785).
    `wait_for_ready`: a call waits, unsent, within its deadline while no server is ready (its one
    server drains or restarts) instead of failing UNAVAILABLE at once."""
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
    if wait_for_ready:
        config["methodConfig"] = [{"name": [{}], "waitForReady": True}]
    return (("grpc.service_config", json.dumps(config)),)


def channel(address: str, tls: TlsMaterial | None = None, expect: Kind | None = None,
            options: Sequence[tuple[str, str | int]] = ()) -> grpc.aio.Channel:
    """A channel to one peer; must be created inside the running event loop. With `tls`, mutual TLS
    to a server whose certificate names it a `expect` (registry, producer or consumer host).
    `options`: more channel arguments (e.g. health_aware())."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=[*CHANNEL_OPTIONS, *options])
    if expect is None:
        raise ValueError(f"a TLS channel to {address} needs the kind of server it expects")
    return grpc.aio.secure_channel(address, wtls.channel_credentials(tls),
                                   options=[*CHANNEL_OPTIONS, *wtls.channel_options(expect), *options])


class Health(NamedTuple):
    serving: bool
    version: str  # what the server announced (wire/version.py), "" for a server that says nothing


async def check_health(address: str, timeout_s: float = 2.0, tls: TlsMaterial | None = None,
                       expect: Sequence[Kind] = SERVER_KINDS) -> bool:
    """Whether the server at `address` reports SERVING (probe_health, without the version)."""
    return (await probe_health(address, timeout_s, tls, expect)).serving


async def probe_health(address: str, timeout_s: float = 2.0, tls: TlsMaterial | None = None,
                       expect: Sequence[Kind] = SERVER_KINDS) -> Health:
    """Whether the server at `address` reports SERVING, and its version. With TLS, a probe presents
    `tls` and accepts a server of any kind in `expect` (a probe of unknown kind tries each name; a
    handshake with the wrong name fails at once, before any call)."""
    kinds = list(expect) if tls is not None else [Kind.REGISTRY]
    for i, kind in enumerate(kinds):
        async with channel(address, tls, kind) as chan:
            call = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
            try:
                resp = await call
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and i + 1 < len(kinds):
                    continue
                raise
            announced = next((str(v) for k, v in await call.initial_metadata() or () if k == METADATA_KEY), "")
            return Health(resp.status == health_pb2.HealthCheckResponse.SERVING, announced)
    return Health(False, "")

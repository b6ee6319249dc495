"""The harness's servers, each its own process (`python -m leasenet.bench NAME LISTEN READY_FILE
tls|plain [UPSTREAM]`): the direct baseline, and the two processes of the bare relay; and the
call path's generic relay (`call-relay LISTEN READY_FILE UPSTREAM`, bench.calls).

The bare relay: the overlay adds two one-way grpc hops to a direct call; these two processes add
those hops, carried the way the overlay carries them, and nothing else:
    client -> relay (Send or SendStream) -> one bidi stream -> relay end (echo) -> back the same way.
The relay's end of the stream is the consumer host's own TunnelClient (its batching included), so
overlay/relay is what the overlay's own work costs (admission, leasing, validation, VM actors):
no leasing, validation, actors or retries here.

With `tls` every hop is mutual TLS, with certificates of the harness's CA (LEASENET_TLS_DIR) and
the kinds the overlay's hops use: the direct server and the relay serve as `consumer` (what a
consumer VM dials), the relay end as `producer` (what the relay dials); the load generator is the
operator, as it is for the TLS overlay."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from consumer_host.tunnel import TunnelClient
from leasenet.bench.measure import cluster_tls
from leasenet.bench.plans import REQUEST_TIMEOUT_S
from producer_host.handlers import load_handler
from wire import rpc
from wire.tls import Identity, Kind, TlsMaterial
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import tunnel_pb2 as tpb
from wire.v1 import tunnel_pb2_grpc as tpb_grpc

DIRECT = Identity(Kind.CONSUMER, "bench-direct")
RELAY = Identity(Kind.CONSUMER, "bench-relay")
RELAY_END = Identity(Kind.PRODUCER, "bench-relay-end")
IDENTITIES = (DIRECT, RELAY, RELAY_END)


def credentials(mode: str, identity: Identity) -> TlsMaterial | None:
    if mode not in ("tls", "plain"):
        raise ValueError(f"{mode!r} is neither tls nor plain")
    return cluster_tls(identity) if mode == "tls" else None


async def serve_until_stopped(server: rpc.Server, ready_file: str) -> None:
    """Start a server, write its address to ready_file, serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = await server.start()
    tmp = Path(ready_file).with_suffix(".tmp")
    tmp.write_text(json.dumps({"address": address, "pid": os.getpid()}))
    tmp.replace(ready_file)
    await stop.wait()
    await server.stop(0.5)


class Direct(cpb_grpc.ConsumerHostServicer):
    """What a user has without leasenet: the service itself behind a gRPC server. The same
    messages as the consumer host's API, so both sides of the comparison move the same bytes."""

    def __init__(self, handler_name: str) -> None:
        self.handler = load_handler(handler_name)

    async def Send(self, request: cpb.SendRequest, context: Any) -> cpb.SendResponse:
        payload = await self.handler(request.payload)
        return cpb.SendResponse(src=request.target, dst=request.src, payload=payload, request_id=request.request_id)

    async def SendStream(self, request_iterator: Any, context: Any) -> Any:
        async for request in request_iterator:
            payload = await self.handler(request.payload)
            yield cpb.SendResponse(src=request.target, dst=request.src, payload=payload,
                                   request_id=request.request_id)


async def direct_server(listen: str, ready_file: str, mode: str) -> None:
    server = rpc.Server(listen, credentials(mode, DIRECT))
    server.add(cpb_grpc.add_ConsumerHostServicer_to_server, Direct("echo"), "leasenet.v1.ConsumerHost")
    await serve_until_stopped(server, ready_file)


class Echo(tpb_grpc.TunnelServicer):
    async def Exchange(self, request_iterator: Any, context: Any) -> Any:
        async for batch in request_iterator:
            yield tpb.FrameBatch(frames=[tpb.Frame(id=f.id, payload=f.payload) for f in batch.frames])


async def relay_end(listen: str, ready_file: str, mode: str) -> None:
    server = rpc.Server(listen, credentials(mode, RELAY_END))
    server.add(tpb_grpc.add_TunnelServicer_to_server, Echo(), "leasenet.v1.Tunnel")
    await serve_until_stopped(server, ready_file)


class Relay(cpb_grpc.ConsumerHostServicer):
    """Each request becomes one frame on the one stream to the relay end."""

    def __init__(self, tunnel: TunnelClient) -> None:
        self.tunnel = tunnel

    async def Send(self, request: cpb.SendRequest, context: Any) -> cpb.SendResponse:
        answer = await self.tunnel.exchange(tpb.Frame(payload=request.payload), REQUEST_TIMEOUT_S)
        return cpb.SendResponse(src=request.target, dst=request.src, payload=answer.payload,
                                request_id=request.request_id)

    async def SendStream(self, request_iterator: AsyncIterator[cpb.SendRequest],
                         context: Any) -> AsyncIterator[cpb.SendResponse]:
        """As the consumer host does it: a task per request, answers in the order they come."""
        out: asyncio.Queue[cpb.SendResponse | None] = asyncio.Queue()

        async def one(request: cpb.SendRequest) -> None:
            out.put_nowait(await self.Send(request, context))

        async def read() -> None:
            try:
                async with asyncio.TaskGroup() as tasks:
                    async for request in request_iterator:
                        tasks.create_task(one(request))
            finally:
                out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (answer := await out.get()) is not None:
                yield answer
        finally:
            reader.cancel()


async def relay(listen: str, ready_file: str, mode: str, upstream: str) -> None:
    tls = credentials(mode, RELAY)
    tunnel = TunnelClient(upstream, on_broken=lambda _address: None, tls=tls).start()  # as a consumer host does
    server = rpc.Server(listen, tls)
    server.add(cpb_grpc.add_ConsumerHostServicer_to_server, Relay(tunnel), "leasenet.v1.ConsumerHost")
    try:
        await serve_until_stopped(server, ready_file)
    finally:
        await tunnel.close()


# what a proxy must not pass on: HTTP/2 pseudo-headers, the transport's own headers (grpc sets them
# again on the next hop) and the grpc- reserved keys
HOP_BY_HOP = ("user-agent", "te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding")


def forwardable(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in metadata or () if not k.startswith(":") and k not in HOP_BY_HOP)


class CallRelay(grpc.GenericRpcHandler):
    """A minimal L7 gRPC proxy, the call path's baseline: every method is one stream_stream call of
    raw message bytes (no (de)serializer: schema-blind), passed on to `upstream` with the request
    metadata and the deadline; the answers, initial and trailing metadata, status and details come
    back as the upstream sent them. Both directions flow side by side; a cancel goes on upstream."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self.upstream = upstream

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(functools.partial(self.forward, handler_call_details.method))

    async def forward(self, method: str, _requests: Any, context: grpc.aio.ServicerContext) -> None:
        call = self.upstream.stream_stream(method)(metadata=forwardable(context.invocation_metadata()),
                                                   timeout=context.time_remaining())

        async def pump() -> None:
            while (message := await context.read()) is not grpc.aio.EOF:
                await call.write(message)
            await call.done_writing()

        # read()/write() rather than iterators, and metadata sent only when there is some: 20-25%
        # less CPU per call than the obvious version (measured), so the baseline is a fair one
        pumping = asyncio.get_running_loop().create_task(pump())
        try:
            first = True
            while (answer := await call.read()) is not grpc.aio.EOF:
                if first and (headers := forwardable(await call.initial_metadata())):
                    await context.send_initial_metadata(headers)
                first = False
                await context.write(answer)
        except grpc.aio.AioRpcError:
            pass  # the status is the upstream's, set below
        finally:
            pumping.cancel()
            call.cancel()  # a no-op once it has ended; the caller's cancel otherwise
        if trailers := await call.trailing_metadata():
            context.set_trailing_metadata(tuple(trailers))
        if (code := await call.code()) != grpc.StatusCode.OK:
            context.set_code(code)
            context.set_details(await call.details())


async def call_relay(listen: str, ready_file: str, upstream: str) -> None:
    async with rpc.channel(upstream) as channel:
        server = rpc.Server(listen)
        server.server.add_generic_rpc_handlers((CallRelay(channel),))
        await serve_until_stopped(server, ready_file)


SERVERS: dict[str, Callable[..., Any]] = {"direct-server": direct_server, "relay-end": relay_end, "relay": relay,
                                          "call-relay": call_relay}

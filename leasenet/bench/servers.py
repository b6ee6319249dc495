"""The harness's servers, each its own process (`python -m leasenet.bench NAME LISTEN READY_FILE
[ARG]`): the direct baseline, and the two processes of the relay floor.

The relay floor: the overlay adds two one-way grpc hops to a direct call; these two processes add
exactly those hops and nothing else (no leasing, validation, batching or retries):
    client -> relay (unary Send) -> one bidi stream -> relay end (echo) -> back the same way.
What the relay costs over the direct call is the floor of any overlay built this way on grpc.aio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from producer_host.handlers import load_handler
from wire import rpc
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import tunnel_pb2 as tpb
from wire.v1 import tunnel_pb2_grpc as tpb_grpc


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


async def direct_server(listen: str, ready_file: str, handler_name: str = "echo") -> None:
    server = rpc.Server(listen)
    server.add(cpb_grpc.add_ConsumerHostServicer_to_server, Direct(handler_name), "leasenet.v1.ConsumerHost")
    await serve_until_stopped(server, ready_file)


class Echo(tpb_grpc.TunnelServicer):
    async def Exchange(self, request_iterator: Any, context: Any) -> Any:
        async for batch in request_iterator:
            yield tpb.FrameBatch(frames=[tpb.Frame(id=f.id, payload=f.payload) for f in batch.frames])


async def relay_end(listen: str, ready_file: str) -> None:
    server = rpc.Server(listen)
    server.add(tpb_grpc.add_TunnelServicer_to_server, Echo(), "leasenet.v1.Tunnel")
    await serve_until_stopped(server, ready_file)


class Relay(cpb_grpc.ConsumerHostServicer):
    """Each Send becomes one frame on one long-lived stream to the relay end."""

    def __init__(self, upstream: str) -> None:
        self.call = tpb_grpc.TunnelStub(rpc.channel(upstream)).Exchange()
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.ids = iter(range(1, 1 << 62))
        self.lock = asyncio.Lock()  # one write at a time on the stream

    async def read(self) -> None:
        async for batch in self.call:
            for frame in batch.frames:
                self.waiting.pop(frame.id).set_result(frame)

    async def Send(self, request: cpb.SendRequest, context: Any) -> cpb.SendResponse:
        frame_id = next(self.ids)
        answer = self.waiting[frame_id] = asyncio.get_running_loop().create_future()
        async with self.lock:
            await self.call.write(tpb.FrameBatch(frames=[tpb.Frame(id=frame_id, payload=request.payload)]))
        frame = await answer
        return cpb.SendResponse(src=request.target, dst=request.src, payload=frame.payload,
                                request_id=request.request_id)


async def relay(listen: str, ready_file: str, upstream: str) -> None:
    servicer = Relay(upstream)
    reader = asyncio.get_running_loop().create_task(servicer.read())
    server = rpc.Server(listen)
    server.add(cpb_grpc.add_ConsumerHostServicer_to_server, servicer, "leasenet.v1.ConsumerHost")
    await serve_until_stopped(server, ready_file)
    reader.cancel()


SERVERS: dict[str, Callable[..., Any]] = {"direct-server": direct_server, "relay-end": relay_end, "relay": relay}

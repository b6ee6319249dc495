"""A producer VM's own gRPC server for tests (issue 18): health, reflection, and callvm.v1.CallVm
(every call kind, any status with trailers, a slow method, a flood). Each call's start and end go
to --events as JSON lines (the VM's own record: the lessee's claim, the deadline it saw, whether it
was cancelled), which tests read.

    python -m tests.vms.callvm --listen unix:///tmp/vm1.sock --vm-id vm1 --events /tmp/vm1.jsonl

prints `READY <address>` once serving."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tests.vms import callvm_pb2 as pb
from tests.vms import callvm_pb2_grpc as pb_grpc

BIN_TRAILER = b"\x00\x01\xfe\xff"  # a -bin trailer's value: not text


class CallVm(pb_grpc.CallVmServicer):
    def __init__(self, vm_id: str, events: str | None) -> None:
        self.vm_id = vm_id
        self.events = open(events, "a", encoding="utf-8") if events else None

    def log(self, context: grpc.aio.ServicerContext, method: str, event: str, **extra: object) -> None:
        if self.events is None:
            return
        md = dict(context.invocation_metadata() or ())
        self.events.write(json.dumps({"vm": self.vm_id, "method": method, "event": event,
                                      "claim": md.get("leasenet-claim", ""), **extra}) + "\n")
        self.events.flush()

    def seen(self, context: grpc.aio.ServicerContext) -> str:
        md = context.invocation_metadata() or ()
        return json.dumps({"vm": self.vm_id, "pid": os.getpid(), "keys": sorted(k for k, _ in md),
                           **{k: v for k, v in md if k in ("leasenet-claim", "traceparent")}})

    async def Unary(self, request: pb.Msg, context: grpc.aio.ServicerContext) -> pb.Msg:
        self.log(context, "Unary", "start")
        echoed = tuple((k, v) for k, v in context.invocation_metadata() or () if k.startswith("x-"))
        await context.send_initial_metadata((("x-vm", self.vm_id), *echoed))
        context.set_trailing_metadata(echoed)
        return pb.Msg(text=request.text, details=self.seen(context))

    async def ClientStream(self, request_iterator: AsyncIterator[pb.Msg],
                           context: grpc.aio.ServicerContext) -> pb.Msg:
        texts = [m.text async for m in request_iterator]
        return pb.Msg(text="+".join(texts), count=len(texts), details=self.seen(context))

    async def ServerStream(self, request: pb.Msg, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Msg]:
        for i in range(request.count):
            yield pb.Msg(text=f"{request.text}-{i}", count=i)

    async def Bidi(self, request_iterator: AsyncIterator[pb.Msg],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Msg]:
        async for m in request_iterator:
            yield pb.Msg(text=m.text.upper(), count=m.count)

    async def Status(self, request: pb.Msg, context: grpc.aio.ServicerContext) -> pb.Msg:
        trailers = (("x-status", str(request.code)), ("x-status-bin", BIN_TRAILER))
        if request.code == 0:
            context.set_trailing_metadata(trailers)
            return pb.Msg(text="ok")
        await context.abort(grpc.StatusCode(_BY_NUMBER[request.code]), request.details, trailing_metadata=trailers)
        raise AssertionError("abort raises")

    async def Slow(self, request: pb.Msg, context: grpc.aio.ServicerContext) -> pb.Msg:
        remaining = context.time_remaining()
        self.log(context, "Slow", "start", text=request.text, deadline_s=remaining)
        try:
            await asyncio.sleep(request.sleep_ms / 1000)
        except asyncio.CancelledError:
            self.log(context, "Slow", "cancelled", text=request.text)
            raise
        self.log(context, "Slow", "finished", text=request.text)
        return pb.Msg(text=request.text)

    async def Flood(self, request: pb.Msg, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Msg]:
        self.log(context, "Flood", "start")
        blob = b"x" * request.size
        for i in range(request.count):
            yield pb.Msg(text=blob.decode(), count=i)
        self.log(context, "Flood", "finished")

    async def Drip(self, request: pb.Msg, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Msg]:
        yield pb.Msg(text=f"{request.text}-first")
        self.log(context, "Drip", "start", text=request.text)
        await asyncio.sleep(request.sleep_ms / 1000)
        yield pb.Msg(text=f"{request.text}-second")


_BY_NUMBER = {code.value[0]: code.value for code in grpc.StatusCode}


async def serve(listen: str, vm_id: str, events: str | None) -> None:
    server = grpc.aio.server()
    pb_grpc.add_CallVmServicer_to_server(CallVm(vm_id, events), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    name = pb.DESCRIPTOR.services_by_name["CallVm"].full_name
    reflection.enable_server_reflection((name, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    port = server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    address = listen if listen.startswith("unix:") else f"{listen.rpartition(':')[0]}:{port}"
    print(f"READY {address}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--vm-id", default="vm")
    parser.add_argument("--events", default=None)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.listen, args.vm_id, args.events))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

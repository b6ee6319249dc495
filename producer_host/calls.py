"""Transparent gRPC calls at the producer host (issue 18 part 3): a tunnel `Call` stream, once
validated like a frame (service.py), is carried to the producer VM's own gRPC server.

The call is schema-blind: a raw-bytes stream_stream call (no serializers) carries any method kind on
the wire, since unary, client-, server-streaming and bidi calls are all one HTTP/2 stream of
length-prefixed messages. Messages are pumped both ways as they come and each write is awaited, so
a slow reader at either end backs pressure up through HTTP/2 flow control instead of growing this
host's memory. The VM's status, details and trailing metadata (`-bin` keys as bytes) go back as its
server sent them; leasenet's own sentences only for what happened before the VM saw the call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from producer_host.actors import Refused, VmActor
from producer_host.vms.settings import DriverKind
from wire import metrics
from wire.callmeta import to_entries, to_grpc_metadata
from wire.errors import Status
from wire.limits import MAX_PAYLOAD_BYTES, payload_too_large
from wire.v1 import tunnel_pb2 as pb

log = logging.getLogger(__name__)

KIND = "producer_host"
CLAIM_KEY = "leasenet-claim"  # the VM's own record of its lessee: the claim's fencing token
IN_PROCESS = ("this service's producer VMs are in-process handlers, which take payload-level Send only; "
              "transparent gRPC calls need VMs that run their own gRPC server")
# the VMs that run their own gRPC server (ProducerVm.handler names their driver: producer_host/vms)
OWN_SERVER = frozenset({DriverKind.COMMAND.value, DriverKind.ENDPOINT.value})
NO_SERVER = "its producer VM's server is not serving now (restarting or withdrawn); the call was not run"
# the VM's own server: messages within the payload limit both ways (gRPC refuses bigger ones)
VM_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_PAYLOAD_BYTES),
    ("grpc.max_receive_message_length", MAX_PAYLOAD_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
def end(code: Status | grpc.StatusCode | int, details: str, trailers: list[pb.MetadataEntry] | None = None,
        broken: bool = False) -> pb.CallDown:
    number = code.value[0] if isinstance(code, grpc.StatusCode) else int(code)
    return pb.CallDown(end=pb.CallEnd(code=number, details=details, trailing_metadata=trailers or [], broken=broken))


# a CallDown gathers what is ready (see tunnel.proto) up to this many bytes of messages
GATHER_BYTES = 256 * 1024


class VmChannels:
    """One channel per VM endpoint, created in the running loop and replaced when the VM's endpoint
    changes (a restarted VM may listen elsewhere)."""

    def __init__(self) -> None:
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}

    def of(self, actor: VmActor, endpoint: str) -> grpc.aio.Channel:
        known = self._channels.get(actor.vm.vm_id)
        if known is not None and known[0] == endpoint:
            return known[1]
        if known is not None:
            asyncio.get_running_loop().create_task(known[1].close())
        channel = grpc.aio.insecure_channel(endpoint, options=VM_CHANNEL_OPTIONS)
        self._channels[actor.vm.vm_id] = (endpoint, channel)
        return channel

    async def close(self) -> None:
        for _, channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def carry(channels: VmChannels, actor: VmActor, first: pb.CallUp,
                upstream: AsyncIterator[pb.CallUp]) -> AsyncIterator[pb.CallDown]:
    """One validated call on `actor`'s VM: `accepted` once the VM's call started, then the VM's
    headers, messages and end. Refusals before the VM saw it end the stream without `accepted`.

    What is ready goes in one CallDown: `accepted` waits for the headers only when the caller has
    sent everything already (it needs `accepted` sooner only to go on sending), and a message goes
    with the end when the VM's status is already in (a unary call: one CallDown)."""
    start = first.start
    if actor.vm.handler not in OWN_SERVER:
        yield end(Status.UNIMPLEMENTED, IN_PROCESS)
        return
    inner = start.inner
    began, requests, responses, code, ended = time.perf_counter(), 0, 0, Status.UNAVAILABLE.name, False
    pump: asyncio.Task[None] | None = None
    try:
        async with actor.turn(inner.request_id, f"{inner.network}/{inner.src}", start.outer.fencing_token,
                              inner.deadline_ms) as turn:
            endpoint = actor.endpoint  # None while the VM restarts or is withdrawn (its supervisor's)
            if endpoint is None:
                raise Refused(Status.UNAVAILABLE, NO_SERVER)
            metadata = (*to_grpc_metadata(start.metadata), (CLAIM_KEY, str(start.outer.fencing_token)))
            channel = channels.of(actor, endpoint)
            call = channel.stream_stream(start.method)(metadata=metadata, timeout=max(0.001, turn.budget_s))
            counts = [0]
            pump = asyncio.get_running_loop().create_task(_pump_up(first, upstream, call, counts))
            try:
                pending = pb.CallDown(accepted=True)
                if not first.half_close:
                    yield pending
                    pending = pb.CallDown()
                headers = await call.initial_metadata()
                if headers:
                    pending.headers.metadata.extend(to_entries(headers))
                size = 0
                while True:
                    try:
                        message = await call.read()
                    except grpc.aio.AioRpcError:
                        break
                    if message is grpc.aio.EOF:
                        break
                    responses += 1
                    pending.messages.append(message)
                    size += len(message)
                    if not call.done() or size >= GATHER_BYTES:  # more may take a while: send what we have
                        yield pending
                        pending, size = pb.CallDown(), 0
                status = await call.code()
                details = await call.details() or ""
                trailers = await call.trailing_metadata()
                # the VM's server went away mid-call if its supervisor took the VM out of service meanwhile
                # (it failed its health checks or is being reset: a status it answered while stopping, such
                # as CANCELLED, is not the call's answer), or if an UNAVAILABLE, which is both a status a
                # server may choose and grpc's own word for a connection that broke, comes from a server
                # that no longer answers a health check
                broken = actor.endpoint != endpoint or (
                    status == grpc.StatusCode.UNAVAILABLE and not await _answers(channel))
                if broken:
                    log.info("%s: its server went away during call %d (%s)", actor.vm.vm_id, inner.request_id,
                             details)
                turn.ok = status == grpc.StatusCode.OK
                code = status.name
                requests, ended = counts[0], True
                pending.end.CopyFrom(end(status, details, to_entries(trailers), broken=broken).end)
                yield pending
            finally:
                call.cancel()  # a no-op once it ended; the consumer's cancel otherwise
        # the VM is free again; the caller stops on our `end`: ending the stream under its writes
        # would lose the `end` (see drain)
        if not pump.done():
            await asyncio.wait({pump}, timeout=1.0)
    except Refused as refused:
        code, ended = refused.status.name, True
        yield end(refused.status, refused.message)
        await drain(upstream)
    except asyncio.CancelledError:
        if not ended:  # the consumer host stops the stream once it has our `end`: that is no cancel
            code = Status.CANCELLED.name
        raise
    finally:
        if pump is not None:
            pump.cancel()
        metrics.call_done(KIND, requests, responses, code, time.perf_counter() - began)


async def _answers(channel: grpc.aio.Channel, within_s: float = 0.5) -> bool:
    """Whether the VM's server answers the standard health check now."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=within_s)
    except grpc.aio.AioRpcError as exc:
        return exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return True


async def drain(upstream: AsyncIterator[pb.CallUp], within_s: float = 1.0) -> None:
    """After a refusal: read (and drop) what the caller still sends until it stops on our `end`.
    Ending a stream under a write in flight makes grpc report INTERNAL to the caller, and our `end`
    may be lost with it: the refusal would look like a broken tunnel (delivery unknown)."""
    try:
        async with asyncio.timeout(within_s):
            async for _ in upstream:
                pass
    except (TimeoutError, grpc.aio.AioRpcError):
        pass


async def _pump_up(first: pb.CallUp, upstream: AsyncIterator[pb.CallUp], call: grpc.aio.StreamStreamCall,
                   counts: list[int]) -> None:
    """The caller's messages to the VM as they come (those in the first CallUp first); each write
    awaited (flow control)."""
    try:
        up: pb.CallUp | None = first
        rest = aiter(upstream)
        while up is not None:
            for message in up.messages:
                if (too_large := payload_too_large(len(message))) is not None:
                    log.info("call message refused: %s", too_large)
                    call.cancel()
                    return
                counts[0] += 1
                await call.write(message)
            if up.half_close:
                break
            up = await anext(rest, None)
        await call.done_writing()
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        pass  # the VM's call already ended: its status is on its way

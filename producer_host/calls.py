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
from collections.abc import AsyncIterator, Iterable

import grpc
import grpc.aio

from producer_host.actors import Refused, VmActor
from wire import metrics
from wire.errors import Status
from wire.limits import MAX_PAYLOAD_BYTES, payload_too_large
from wire.v1 import tunnel_pb2 as pb

log = logging.getLogger(__name__)

KIND = "producer_host"
CLAIM_KEY = "leasenet-claim"  # the VM's own record of its lessee: the claim's fencing token
IN_PROCESS = ("this service's producer VMs are in-process handlers, which take payload-level Send only; "
              "transparent gRPC calls need VMs that run their own gRPC server")
# the VM's own server: messages within the payload limit both ways (gRPC refuses bigger ones)
VM_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_PAYLOAD_BYTES),
    ("grpc.max_receive_message_length", MAX_PAYLOAD_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
Metadata = tuple[tuple[str, str | bytes], ...]


def to_grpc_metadata(entries: Iterable[pb.MetadataEntry]) -> Metadata:
    """Tunnel entries as grpc metadata: `-bin` values stay bytes, others are text."""
    return tuple((e.key, e.value if e.key.endswith("-bin") else e.value.decode("utf-8", "replace")) for e in entries)


def to_entries(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[pb.MetadataEntry]:
    return [pb.MetadataEntry(key=k, value=v if isinstance(v, bytes) else v.encode()) for k, v in metadata or ()]


def end(code: Status | grpc.StatusCode | int, details: str, trailers: list[pb.MetadataEntry] | None = None,
        broken: bool = False) -> pb.CallDown:
    number = code.value[0] if isinstance(code, grpc.StatusCode) else int(code)
    return pb.CallDown(end=pb.CallEnd(code=number, details=details, trailing_metadata=trailers or [], broken=broken))


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


async def carry(channels: VmChannels, actor: VmActor, start: pb.CallStart,
                upstream: AsyncIterator[pb.CallUp]) -> AsyncIterator[pb.CallDown]:
    """One validated call on `actor`'s VM: `accepted` once the VM's call started, then the VM's
    headers, messages and end. Refusals before the VM saw it end the stream without `accepted`."""
    endpoint = actor.endpoint
    if endpoint is None:
        yield end(Status.UNIMPLEMENTED, IN_PROCESS)
        return
    inner = start.inner
    began, requests, responses, code = time.perf_counter(), 0, 0, Status.UNAVAILABLE.name
    try:
        async with actor.turn(inner.request_id, f"{inner.network}/{inner.src}", start.outer.fencing_token,
                              inner.deadline_ms) as turn:
            metadata = (*to_grpc_metadata(start.metadata), (CLAIM_KEY, str(start.outer.fencing_token)))
            channel = channels.of(actor, endpoint)
            call = channel.stream_stream(start.method)(metadata=metadata, timeout=max(0.001, turn.budget_s))
            counts = [0]
            pump = asyncio.get_running_loop().create_task(_pump_up(upstream, call, counts))
            try:
                yield pb.CallDown(accepted=True)
                headers = await call.initial_metadata()
                if headers:
                    yield pb.CallDown(headers=pb.Headers(metadata=to_entries(headers)))
                while True:
                    try:
                        message = await call.read()
                    except grpc.aio.AioRpcError:
                        break
                    if message is grpc.aio.EOF:
                        break
                    responses += 1
                    yield pb.CallDown(message=message)
                status = await call.code()
                details = await call.details() or ""
                trailers = await call.trailing_metadata()
                # grpc's own UNAVAILABLE with no trailers on a channel no longer ready: the VM's server
                # went away mid-call (its connection broke), not a status the server chose
                broken = (status == grpc.StatusCode.UNAVAILABLE and not trailers
                          and channel.get_state() != grpc.ChannelConnectivity.READY)
                if broken:
                    log.info("%s: its server went away during call %d (%s)", actor.vm.vm_id, inner.request_id,
                             details)
                turn.ok = status == grpc.StatusCode.OK
                code = status.name
                requests = counts[0]
                yield end(status, details, to_entries(trailers), broken=broken)
            finally:
                pump.cancel()
                call.cancel()  # a no-op once it ended; the consumer's cancel otherwise
    except Refused as refused:
        code = refused.status.name
        yield end(refused.status, refused.message)
    except asyncio.CancelledError:
        code = Status.CANCELLED.name
        raise
    finally:
        metrics.call_done(KIND, requests, responses, code, time.perf_counter() - began)


async def _pump_up(upstream: AsyncIterator[pb.CallUp], call: grpc.aio.StreamStreamCall, counts: list[int]) -> None:
    """The caller's messages to the VM as they come; each write awaited (flow control)."""
    try:
        async for up in upstream:
            kind = up.WhichOneof("kind")
            if kind == "message":
                if (too_large := payload_too_large(len(up.message))) is not None:
                    log.info("call message refused: %s", too_large)
                    call.cancel()
                    return
                counts[0] += 1
                await call.write(up.message)
            elif kind == "half_close":
                break
        await call.done_writing()
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        pass  # the VM's call already ended: its status is on its way

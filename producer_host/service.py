"""The producer host process (`leasenet producer-host`): registration under a liveness lease,
the VM actors, and the tunnel endpoint (SPEC §3 steps 11-12)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from wire import metrics
from wire.lifecycle import Step, cancel_all, shut_down
from wire.rpc import Server, edge, end_of_stream
from wire.otel import OtelSpans
from wire.tls import Identity, TlsMaterial, peer_identity
from wire.trace import NO_SPANS, Spans, TraceParent, parse, trace_id_of
from wire.v1 import tunnel_pb2 as pb
from wire.v1 import tunnel_pb2_grpc as pb_grpc
from producer_host.actors import Envelope, History, VmActor
from producer_host.handlers import load_handler
from producer_host.validate import Accept, Addressing, Reject, may_open_tunnel, validate
from wire.errors import Status
from mapping.liveness import Liveness
from mapping.model import Host, HostId, HostKind, ProducerVm, VmId, parse_ipv4
from mapping.replica import Replica
from mapping.store import Store

log = logging.getLogger(__name__)

# at shutdown, requests running or queued on a VM get this long to finish (SPEC §5 drain)
DRAIN_LIMIT_S = 8.0
EARLY_CLAIM_WAIT_S = 1.0  # a frame may outrun the claim's arrival in our replica
# one stream message stays far below rpc.MAX_MESSAGE_BYTES (4 MiB) although a payload may be 1 MiB
MAX_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    host_id: HostId
    listen: str
    advertise: str  # the host address consumer hosts dial; "" = the listen address
    network: str
    service: str
    vms: int
    vm_address_start: str
    handler: str = "echo"
    handler_options: dict[str, str] = field(default_factory=dict)
    liveness_ttl_s: int = 3
    history_path: str | None = None
    tls: TlsMaterial | None = field(default=None, repr=False)  # None: plaintext (--insecure)
    otlp_endpoint: str = ""  # export spans (validate, execute) here; "" = trace ids in logs only

    def vm_addresses(self) -> list[str]:
        first = ipaddress.IPv4Address(parse_ipv4(self.vm_address_start, "--vm-address-start"))
        return [str(first + i) for i in range(self.vms)]


def host_record(config: ProducerConfig, address: str, draining: bool = False) -> Host:
    return Host(config.host_id, HostKind.PRODUCER, address, draining=draining)


def vm_records(config: ProducerConfig) -> list[ProducerVm]:
    return [ProducerVm(config.network, a, config.host_id, config.service, config.handler)
            for a in config.vm_addresses()]


async def _take_first(request_iterator: AsyncIterator[pb.FrameBatch], within_s: float = 1.0) -> None:
    """Read (and drop) what a refused caller already sent: ending a stream under a write still in
    flight makes grpc report INTERNAL "Internal error from Core" to the caller, not our status."""
    try:
        async with asyncio.timeout(within_s):
            await anext(aiter(request_iterator), None)
    except (TimeoutError, grpc.aio.AioRpcError, DecodeError):
        pass


class TunnelServicer(pb_grpc.TunnelServicer):
    """The tunnel endpoint. A stream's sender is its peer certificate's consumer host (validate.py);
    `insecure`: no certificates, the frame's `src_host` is believed (today's plaintext mode)."""

    def __init__(self, host_id: HostId, replica: Replica, *, insecure: bool = False, spans: Spans = NO_SPANS) -> None:
        self.host_id = host_id
        self.spans = spans
        self.insecure = insecure  # plaintext (--insecure): no peer certificate, frames' fields are believed
        self.address = ""  # set once the server is bound: frames for anyone else are refused
        self.replica = replica
        self.actors: dict[VmId, VmActor] = {}
        self.streams = 0  # open tunnel streams (leasenet_tunnel_streams)

    @edge
    async def Exchange(self, request_iterator: AsyncIterator[pb.FrameBatch],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FrameBatch]:
        peer = None if self.insecure else peer_identity(context)
        if not self.insecure and (refused := may_open_tunnel(peer)) is not None:
            metrics.TUNNEL_FRAMES_REJECTED.labels("TunnelRefused").inc()
            await _take_first(request_iterator)
            raise refused.error(refused.message)
        self.streams += 1
        out: asyncio.Queue[pb.Frame | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def read() -> None:
            try:
                async for batch in request_iterator:
                    metrics.TUNNEL_IN.inc(len(batch.frames))
                    for frame in batch.frames:
                        self._accept(frame, peer, out, pending)
            finally:
                # answer what is in flight before closing our side (requests already taken are not dropped)
                while pending:
                    await asyncio.gather(*list(pending), return_exceptions=True)
                out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                first = await out.get()
                if first is None:
                    await end_of_stream(reader, context, "a frame batch")
                    return
                # every answer that is ready goes in one stream message, up to MAX_BATCH_BYTES
                frames, size, ended = [first], len(first.payload), False
                while size < MAX_BATCH_BYTES and not out.empty():
                    f = out.get_nowait()
                    if f is None:
                        ended = True
                        break
                    frames.append(f)
                    size += len(f.payload) + 256
                metrics.TUNNEL_OUT.inc(len(frames))
                yield pb.FrameBatch(frames=frames)
                if ended:
                    await end_of_stream(reader, context, "a frame batch")
                    return
        finally:
            self.streams -= 1
            reader.cancel()

    def _parent(self, frame: pb.Frame) -> TraceParent | None:
        """The consumer host's exchange span, parent of ours (parsed only when spans are exported)."""
        return parse(frame.traceparent) if self.spans.enabled and frame.traceparent else None

    def _validate(self, frame: pb.Frame, peer: Identity | None) -> Accept | Reject:
        with self.spans.span("validate", self._parent(frame)):
            return validate(_addressing(frame), self.replica.state, self.host_id, self.address, peer,
                            insecure=self.insecure)

    def _accept(self, frame: pb.Frame, peer: Identity | None, out: asyncio.Queue[pb.Frame | None],
                pending: set[asyncio.Task[None]]) -> None:
        verdict = self._validate(frame, peer)
        if isinstance(verdict, Reject) and verdict.may_be_early:
            task = asyncio.get_running_loop().create_task(self._accept_late(frame, peer, out))
            pending.add(task)
            task.add_done_callback(pending.discard)
            return
        self._dispatch(frame, verdict, out)

    async def _accept_late(self, frame: pb.Frame, peer: Identity | None, out: asyncio.Queue[pb.Frame | None]) -> None:
        await self.replica.wait_for_revision(frame.outer.fencing_token, EARLY_CLAIM_WAIT_S)
        self._dispatch(frame, self._validate(frame, peer), out)

    def _dispatch(self, frame: pb.Frame, verdict: Accept | Reject, out: asyncio.Queue[pb.Frame | None]) -> None:
        exported = self.spans.enabled and isinstance(verdict, Accept)
        ended = self.spans.started("execute", self._parent(frame)) if exported else None

        def reply(code: Status, message: str, payload: bytes, delivered: bool = False) -> None:
            if ended is not None:
                ended(int(code))
            if log.isEnabledFor(logging.DEBUG):  # an actor answers outside the stream's task: name the request
                inner = frame.inner
                log.debug("request %d from %s/%s to %s: %s %s", inner.request_id, inner.network, inner.src,
                          inner.dst, code.name, message,
                          extra={"trace_id": trace_id_of(frame.traceparent), "request_id": inner.request_id})
            out.put_nowait(_response(frame, code, message, payload, delivered))

        if isinstance(verdict, Reject):
            metrics.TUNNEL_FRAMES_REJECTED.labels(verdict.error.__name__).inc()
            reply(verdict.code, verdict.message, b"")
            return
        actor = self.actors.get(verdict.vm)
        if actor is None:
            metrics.TUNNEL_FRAMES_REJECTED.labels("VmNotRunning").inc()
            reply(Status.NOT_FOUND, f"producer VM {verdict.vm} is not running on this host", b"")
            return
        inner = frame.inner
        actor.tell(Envelope(frame.payload, inner.request_id, f"{inner.network}/{inner.src}",
                            frame.outer.fencing_token, inner.deadline_ms, reply))


def _addressing(frame: pb.Frame) -> Addressing:
    o, i = frame.outer, frame.inner
    return Addressing(o.vni, o.src_host, o.dst_host, o.fencing_token, i.network, i.src, i.dst)


def _response(frame: pb.Frame, code: Status, message: str, payload: bytes, delivered: bool) -> pb.Frame:
    """SPEC §3 step 12: the answer goes back with outer addresses swapped and inner ones reversed."""
    o, i = frame.outer, frame.inner
    return pb.Frame(
        id=frame.id,
        outer=pb.OuterHeader(vni=o.vni, src_host=o.dst_host, dst_host=o.src_host, fencing_token=o.fencing_token),
        inner=pb.InnerHeader(network=i.network, src=i.dst, src_port=i.dst_port, dst=i.src, dst_port=i.src_port,
                             request_id=i.request_id),
        payload=payload, status_code=int(code), status_message=message, delivered=delivered,
        traceparent=frame.traceparent)


async def serve(config: ProducerConfig, store: Store, *, stop: asyncio.Event,
                ready: Callable[[str], None] | None = None) -> None:
    """The producer host until `stop` is set. Its long-running tasks (replica, liveness, one actor
    per VM) live in one task group; the drain of SPEC §5 (no new claims, in-flight requests finish,
    deregister) runs in `finally`, so a failed task or a broken start-up deregisters too."""
    load_handler(config.handler, config.handler_options)  # fail fast on a bad handler or option
    history = History(open(config.history_path, "a", encoding="utf-8")) if config.history_path else None
    replica = Replica(store)
    server = Server(config.listen, config.tls)
    spans = OtelSpans(config.otlp_endpoint, "producer", config.host_id) if config.otlp_endpoint else NO_SPANS
    tunnel = TunnelServicer(config.host_id, replica, insecure=config.tls is None, spans=spans)
    server.add(pb_grpc.add_TunnelServicer_to_server, tunnel, "leasenet.v1.Tunnel")
    registration = Liveness(store, config.host_id,
                            lambda: [host_record(config, tunnel.address), *vm_records(config)], config.liveness_ttl_s)
    actors = {vm.vm_id: VmActor(vm, load_handler(config.handler, config.handler_options), history)
              for vm in vm_records(config)}
    unwatch = metrics.TUNNEL_STREAMS.watch(lambda: {(): tunnel.streams})
    try:
        async with asyncio.TaskGroup() as tasks:
            background = [tasks.create_task(replica.run(), name="replica")]
            keep_alive: asyncio.Task[None] | None = None
            try:
                await replica.synced.wait()
                bound = await server.start(serving=False)  # always: `or` would skip it when advertising
                tunnel.address = config.advertise or bound
                await registration.register()
                keep_alive = tasks.create_task(registration.keep_alive(), name="liveness")
                background += [keep_alive, *(actor.start(tasks) for actor in actors.values())]
                tunnel.actors = actors
                await server.set_serving(True)
                log.info("producer host %s serving %d VMs on %s", config.host_id, len(actors), tunnel.address)
                if ready is not None:
                    ready(tunnel.address)
                await stop.wait()
                log.info("producer host %s draining", config.host_id)
            finally:
                registered, serving = bool(registration.registrations), bool(server.port)
                draining = host_record(config, tunnel.address, draining=True)
                await shut_down([
                    Step("mark the host draining", lambda: registration.update(draining), 2.0) if registered else None,
                    Step("stop taking frames", lambda: server.set_serving(False), 1.0) if serving else None,
                    Step("let the requests in flight finish", lambda: _idle(actors.values()), DRAIN_LIMIT_S),
                    Step("deregister", lambda: registration.deregister(keep_alive), 2.0) if registered else None,
                    Step("stop the tunnel server", lambda: server.stop(0.5), 1.5) if serving else None,
                    Step("stop the VMs", lambda: _stop(actors.values()), 2.0),
                    Step("export the last spans", lambda: asyncio.to_thread(spans.close), 6.0)
                    if spans.enabled else None,
                ])
                cancel_all(background)
    finally:
        unwatch()
        if history is not None:  # after the actors, which write to it, have ended
            history.stream.close()


async def _idle(actors: Iterable[VmActor]) -> None:
    for actor in actors:
        await actor.idle()


async def _stop(actors: Iterable[VmActor]) -> None:
    for actor in actors:
        await actor.stop()

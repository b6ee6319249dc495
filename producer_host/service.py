"""The producer host process (`leasenet producer-host`): registration under a liveness lease,
the VM actors, and the tunnel endpoint (SPEC §3 steps 11-12).

Everything a consumer host can make this host hold is bounded (limits.Limits, SPEC §10): tunnel
streams per consumer host, requests in flight per stream, early frames per host (held in one list
per stream and retried by one task per stream when the replica moves, not a task per frame), each
VM's queue; past a bound the frame is answered RESOURCE_EXHAUSTED with a sentence. Answers waiting
to be written are bounded by backpressure instead: past `reply_queue` the stream's reader stops
reading until the writer catches up (an answer is never dropped)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from wire import metrics, version
from wire.version import Protocol
from wire.lifecycle import Step, cancel_all, shut_down
from wire.limits import MAX_BATCH_BYTES
from wire.otel import OtelSpans
from wire.rpc import Server, ServerCaps, edge_counting, end_of_stream
from wire.tls import Identity, TlsMaterial, peer_identity
from wire.trace import NO_SPANS, Spans, TraceParent, bind, parse, trace_id_of
from wire.verdict import Refusal
from wire.v1 import tunnel_pb2 as pb
from wire.v1 import tunnel_pb2_grpc as pb_grpc
from producer_host import limits
from producer_host import calls
from producer_host.actors import Envelope, History, VmActor
from producer_host.handlers import handler_maker
from producer_host.limits import Limits, Overloaded
from producer_host.validate import Accept, Addressing, MaybeEarly, holds_claim, may_open_tunnel, validate
from producer_host.vms.fleet import SupervisedVms, own_server_handler
from producer_host.vms.settings import DriverKind, VmSettings
from wire.errors import Status
from mapping.liveness import Liveness
from mapping.model import Claim, Host, HostId, HostKind, ProducerVm, Record, VmId, parse_ipv4
from mapping.replica import Replica
from mapping.scopes import watch_prefixes
from mapping.store import Store

log = logging.getLogger(__name__)

# at shutdown, requests running or queued on a VM get this long to finish (SPEC §5 drain)
DRAIN_LIMIT_S = 8.0
EARLY_CLAIM_WAIT_S = 1.0  # a frame may outrun the claim's arrival in our replica


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
    limits: Limits = field(default_factory=Limits)
    vm: VmSettings = field(default_factory=VmSettings)  # in-process handlers, command VMs or endpoints

    def vm_addresses(self) -> list[str]:
        first = ipaddress.IPv4Address(parse_ipv4(self.vm_address_start, "--vm-address-start"))
        return [str(first + i) for i in range(self.vms)]


def host_record(config: ProducerConfig, address: str, draining: bool = False) -> Host:
    return Host(config.host_id, HostKind.PRODUCER, address, draining=draining, version=str(version.ours()))


def vm_records(config: ProducerConfig) -> list[ProducerVm]:
    """The host's VMs; `handler` names what serves them (the handler, or `command` / `endpoint`)."""
    kind = config.vm.kind
    handler = config.handler if kind is DriverKind.IN_PROCESS else kind.value
    return [ProducerVm(config.network, a, config.host_id, config.service, handler) for a in config.vm_addresses()]


async def _take_first(request_iterator: AsyncIterator[pb.FrameBatch], within_s: float = 1.0) -> None:
    """Read (and drop) what a refused caller already sent: ending a stream under a write still in
    flight makes grpc report INTERNAL "Internal error from Core" to the caller, not our status."""
    try:
        async with asyncio.timeout(within_s):
            await anext(aiter(request_iterator), None)
    except (TimeoutError, grpc.aio.AioRpcError, DecodeError):
        pass


@dataclass(slots=True)
class _Budget:
    """Frames and their payload bytes held against two bounds (early frames, requests in flight)."""

    frames: int
    size: int
    held: int = 0
    held_bytes: int = 0

    def take(self, size: int) -> bool:
        if self.held >= self.frames or self.held_bytes + size > self.size:
            return False
        self.held += 1
        self.held_bytes += size
        return True

    def give(self, size: int) -> None:
        self.held -= 1
        self.held_bytes -= size


@dataclass(eq=False, slots=True)
class _Parked:
    """A frame whose claim may not have reached our replica yet."""

    frame: pb.Frame
    until: float  # loop time: past it, the frame's refusal stands


@dataclass(eq=False, slots=True)
class _Stream:
    """One tunnel stream's state: its answers waiting to be written, its requests in flight and its
    early frames, each bounded (limits.Limits)."""

    peer: Identity | None
    in_flight: _Budget
    out: asyncio.Queue[pb.Frame | None] = field(default_factory=asyncio.Queue)
    room: asyncio.Event = field(default_factory=asyncio.Event)  # `out` is below its bound again
    parked: deque[_Parked] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # retry the parked frames
    closing: bool = False  # the caller stopped sending: answer what is in flight, then end
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, frame: pb.Frame, code: Status, message: str, payload: bytes = b"",
               delivered: bool = False) -> None:
        self.out.put_nowait(_response(frame, code, message, payload, delivered))

    def check_settled(self) -> None:
        if self.closing and not self.in_flight.held and not self.parked:
            self.settled.set()


class TunnelServicer(pb_grpc.TunnelServicer):
    """The tunnel endpoint. A stream's sender is its peer certificate's consumer host (validate.py);
    `insecure`: no certificates, the frame's `src_host` is believed (today's plaintext mode)."""

    def __init__(self, host_id: HostId, replica: Replica, *, insecure: bool = False,
                 limits: Limits = Limits(), spans: Spans = NO_SPANS) -> None:
        self.host_id = host_id
        self.spans = spans
        self.insecure = insecure  # plaintext (--insecure): no peer certificate, frames' fields are believed
        self.address = ""  # set once the server is bound: frames for anyone else are refused
        self.replica = replica
        self.limits = limits
        self.actors: dict[VmId, VmActor] = {}
        # set by the drain: new frames and calls are refused before they run (the consumer host sends
        # them to another VM), so the work in flight is all there is to wait for
        self.draining = False
        self.early = _Budget(limits.early_frames, limits.early_bytes)  # parked frames, all streams together
        self._streams: set[_Stream] = set()
        self._streams_of: Counter[str] = Counter()  # open streams per consumer host
        self.vm_channels = calls.VmChannels()  # transparent calls: one channel per VM endpoint
        self._moved = asyncio.Event()  # the replica moved: a call whose claim may be early looks again
        replica.subscribe(self._on_change)

    def _on_change(self, key: str, old: Record | None, new: Record | None, revision: int) -> None:
        """A claim that ended wipes its VM's state now; any change may be the claim a parked frame
        waits for (retried once the whole watch batch is in: the claim and its pool come together)."""
        if isinstance(old, Claim) and (new is None or getattr(new, "revision", 0) != old.revision):
            actor = self.actors.get(old.vm)
            if actor is not None:
                actor.claim_ended(old.revision)
        self._moved.set()
        if self.early.held:
            for stream in self._streams:
                if stream.parked:
                    stream.wake.set()

    @edge_counting("producer_host")  # a stream refused whole is counted here; frames where they are answered
    async def Exchange(self, request_iterator: AsyncIterator[pb.FrameBatch],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FrameBatch]:
        peer = None if self.insecure else peer_identity(context)
        if not self.insecure and (refused := may_open_tunnel(peer)) is not None:
            metrics.TUNNEL_FRAMES_REJECTED.labels("TunnelRefused").inc()
            await _take_first(request_iterator)
            raise refused.exception()
        # ours in the stream's initial metadata; a refusal comes before we read a frame, so the
        # consumer host fails its frames as not delivered (consumer_host/tunnel.py)
        await context.send_initial_metadata(version.metadata())
        if (refused := self._version_refused(context, peer)) is not None:
            await _take_first(request_iterator)
            raise refused.exception()
        owner = "" if peer is None else str(peer)  # --insecure: no identity to count streams by
        if owner and self._streams_of[owner] >= self.limits.streams_per_peer:
            await _take_first(request_iterator)
            raise Overloaded(limits.streams_per_peer_full(owner, self.limits.streams_per_peer),
                             reason="streams_per_peer")
        stream = _Stream(peer, _Budget(self.limits.stream_in_flight, self.limits.stream_in_flight_bytes))
        self._streams.add(stream)
        self._streams_of[owner] += 1
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(request_iterator, stream))
        retrier = loop.create_task(self._retry_early(stream))
        try:
            while True:
                first = await stream.out.get()
                if first is None:
                    await end_of_stream(reader, context, "a frame batch")
                    return
                # every answer that is ready goes in one stream message, up to MAX_BATCH_BYTES
                frames, size, ended = [first], len(first.payload), False
                while size < MAX_BATCH_BYTES and not stream.out.empty():
                    f = stream.out.get_nowait()
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
                if stream.out.qsize() < self.limits.reply_queue:
                    stream.room.set()
        finally:
            reader.cancel()
            retrier.cancel()
            self._streams.discard(stream)
            for parked in stream.parked:
                self.early.give(len(parked.frame.payload))
            self._streams_of[owner] -= 1
            if not self._streams_of[owner]:
                del self._streams_of[owner]

    @edge_counting("producer_host")
    async def Call(self, request_iterator: AsyncIterator[pb.CallUp],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CallDown]:
        """One transparent gRPC call (producer_host/calls.py), its own HTTP/2 stream. Its CallStart
        is validated exactly as a frame is (same addressing, same verdicts, the sender = the peer
        certificate); a refusal is an `end` before `accepted`, which the consumer host retries."""
        peer = None if self.insecure else peer_identity(context)
        if not self.insecure and (refused := may_open_tunnel(peer)) is not None:
            metrics.TUNNEL_FRAMES_REJECTED.labels("TunnelRefused").inc()
            await _take_first(request_iterator)
            raise refused.exception()
        if (refused := self._version_refused(context, peer)) is not None:  # before `accepted`: not delivered
            yield calls.end(refused.code, refused.message)
            await calls.drain(request_iterator)
            return
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("start"):
            yield calls.end(Status.INVALID_ARGUMENT, "a call stream must begin with its CallStart")
            await calls.drain(request_iterator)
            return
        start = first.start
        verdict = await self._validate_call(start, peer)
        actor = self.actors.get(verdict.vm) if isinstance(verdict, Accept) and not self.draining else None
        if actor is None:
            reason, code, message = ((verdict.error.__name__, verdict.code, verdict.message)
                                     if isinstance(verdict, Refusal) else
                                     ("HostDraining", Status.UNAVAILABLE, limits.DRAINING) if self.draining else
                                     ("VmNotRunning", Status.NOT_FOUND, "its producer VM is not running"))
            metrics.TUNNEL_FRAMES_REJECTED.labels(reason).inc()
            yield calls.end(code, message)
            await calls.drain(request_iterator)
            return
        # our log lines name the call; each RPC runs in a task of its own, so the binding ends with it
        bind(trace_id_of(start.traceparent), start.inner.request_id)
        async for down in calls.carry(self.vm_channels, actor, first, request_iterator):
            yield down

    def _version_refused(self, context: grpc.aio.ServicerContext, peer: Identity | None) -> Refusal | None:
        """A caller that speaks no tunnel protocol version in common with us (wire/version.py)."""
        refused = version.check_peer(Protocol.TUNNEL, context.invocation_metadata(), f"producer host {self.host_id}",
                                     f"consumer host {peer.id}" if peer is not None else "the tunnel's peer")
        if refused is not None:
            metrics.TUNNEL_FRAMES_REJECTED.labels(refused.error.__name__).inc()
            log.warning("%s", refused.message)
        return refused

    async def _validate_call(self, start: pb.CallStart, peer: Identity | None) -> Accept | Refusal:
        """validate() on the call's headers; a claim that may not have reached our replica yet is
        looked at again as the replica moves, for EARLY_CLAIM_WAIT_S (as a parked frame is)."""
        frame = pb.Frame(outer=start.outer, inner=start.inner, traceparent=start.traceparent)
        loop = asyncio.get_running_loop()
        until = loop.time() + EARLY_CLAIM_WAIT_S
        while True:
            self._moved.clear()
            verdict = self._validate(frame, peer)
            if not isinstance(verdict, MaybeEarly) or loop.time() >= until:
                return verdict
            try:
                async with asyncio.timeout(until - loop.time()):
                    await self._moved.wait()
            except TimeoutError:
                pass

    async def _read(self, request_iterator: AsyncIterator[pb.FrameBatch], stream: _Stream) -> None:
        bound = self.limits.reply_queue
        try:
            async for batch in request_iterator:
                metrics.TUNNEL_IN.inc(len(batch.frames))
                for frame in batch.frames:
                    if stream.out.qsize() >= bound:  # the caller does not read its answers: stop reading
                        stream.room.clear()
                        await stream.room.wait()
                    self._accept(frame, stream)
        finally:
            # answer what is in flight before closing our side (requests already taken are not dropped)
            stream.closing = True
            stream.check_settled()
            await stream.settled.wait()
            stream.out.put_nowait(None)

    @property
    def streams(self) -> int:
        """Open tunnel streams (leasenet_tunnel_streams)."""
        return len(self._streams)

    def _parent(self, frame: pb.Frame) -> TraceParent | None:
        """The consumer host's exchange span, parent of ours (parsed only when spans are exported)."""
        return parse(frame.traceparent) if self.spans.enabled and frame.traceparent else None

    def _validate(self, frame: pb.Frame, peer: Identity | None) -> Accept | Refusal:
        with self.spans.span("validate", self._parent(frame)):
            return validate(_addressing(frame), self.replica.state, self.host_id, self.address, peer,
                            insecure=self.insecure)

    def _accept(self, frame: pb.Frame, stream: _Stream) -> None:
        verdict = self._validate(frame, stream.peer)
        if isinstance(verdict, MaybeEarly):
            if not self.early.take(len(frame.payload)):
                metrics.TUNNEL_FRAMES_REJECTED.labels("EarlyFramesFull").inc()
                metrics.exhausted("producer_host", "early_frames")
                stream.answer(frame, Status.RESOURCE_EXHAUSTED, limits.early_frames_full(self.early.frames,
                                                                                         self.early.size))
                return
            own = pb.Frame()
            own.CopyFrom(frame)  # not a view into its batch: a parked frame must not keep the batch alive
            stream.parked.append(_Parked(own, asyncio.get_running_loop().time() + EARLY_CLAIM_WAIT_S))
            if len(stream.parked) == 1:
                stream.wake.set()
            return
        self._dispatch(frame, verdict, stream)

    async def _retry_early(self, stream: _Stream) -> None:
        """The stream's one task for early frames: each is retried whenever the replica moves and
        dispatched once it is no longer early or its wait is over."""
        loop = asyncio.get_running_loop()
        while True:
            if not stream.parked:
                await stream.wake.wait()
                stream.wake.clear()
                continue
            try:
                async with asyncio.timeout(max(0.0, stream.parked[0].until - loop.time())):
                    await stream.wake.wait()
            except TimeoutError:
                pass
            stream.wake.clear()
            now, waiting = loop.time(), deque[_Parked]()
            for parked in stream.parked:
                verdict = self._validate(parked.frame, stream.peer)
                if isinstance(verdict, MaybeEarly) and parked.until > now:
                    waiting.append(parked)
                    continue
                self.early.give(len(parked.frame.payload))
                self._dispatch(parked.frame, verdict, stream)
            stream.parked = waiting
            stream.check_settled()

    def _dispatch(self, frame: pb.Frame, verdict: Accept | Refusal, stream: _Stream) -> None:
        if isinstance(verdict, Refusal):
            metrics.TUNNEL_FRAMES_REJECTED.labels(verdict.error.__name__).inc()
            stream.answer(frame, verdict.code, verdict.message)
            return
        if self.draining:
            metrics.TUNNEL_FRAMES_REJECTED.labels("HostDraining").inc()
            stream.answer(frame, Status.UNAVAILABLE, limits.DRAINING)
            return
        actor = self.actors.get(verdict.vm)
        if actor is None:
            metrics.TUNNEL_FRAMES_REJECTED.labels("VmNotRunning").inc()
            log.info("frame %d: producer VM %s is not running on this host", frame.id, verdict.vm)
            stream.answer(frame, Status.NOT_FOUND, "its producer VM is not running")
            return
        size, in_flight = len(frame.payload), stream.in_flight
        if not in_flight.take(size):
            metrics.TUNNEL_FRAMES_REJECTED.labels("StreamInFlightFull").inc()
            metrics.exhausted("producer_host", "stream_in_flight")
            stream.answer(frame, Status.RESOURCE_EXHAUSTED, limits.stream_in_flight_full(in_flight.frames,
                                                                                         in_flight.size))
            return
        # the answer's headers now, in a message of its own: a waiting reply must not hold on to
        # `frame`, whose memory is the whole received batch's (protobuf keeps it in one arena)
        answer = _response(frame, Status.OK, "", b"", False)
        ended = self.spans.started("execute", self._parent(frame)) if self.spans.enabled else None

        def reply(code: Status, message: str, payload: bytes, delivered: bool = False) -> None:
            if ended is not None:
                ended(int(code))
            if log.isEnabledFor(logging.DEBUG):  # an actor answers outside the stream's task: name the request
                log.debug("request %d from %s/%s to %s: %s %s", answer.inner.request_id, answer.inner.network,
                          answer.inner.dst, answer.inner.src, code.name, message,
                          extra={"trace_id": trace_id_of(answer.traceparent), "request_id": answer.inner.request_id})
            in_flight.give(size)
            answer.status_code, answer.status_message, answer.payload = code, message, payload
            answer.delivered = delivered
            stream.out.put_nowait(answer)
            stream.check_settled()

        inner = frame.inner
        actor.tell(Envelope(frame.payload, inner.request_id, f"{inner.network}/{inner.src}",
                            frame.outer.fencing_token, inner.deadline_ms, reply))


def _addressing(frame: pb.Frame) -> Addressing:
    o, i = frame.outer, frame.inner
    return Addressing(o.vni, o.src_host, o.dst_host, o.fencing_token, i.network, i.src, i.dst, len(frame.payload))


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
    in_process = config.vm.kind is DriverKind.IN_PROCESS
    # fails fast on a bad handler or option
    handlers = handler_maker(config.handler, config.handler_options) if in_process else own_server_handler
    history = History(open(config.history_path, "a", encoding="utf-8")) if config.history_path else None
    replica = Replica(store, prefixes=watch_prefixes(HostKind.PRODUCER, config.host_id))  # its own VMs and claims
    caps = config.limits
    server = Server(config.listen, config.tls, ServerCaps(caps.concurrent_rpcs, caps.streams_per_connection))
    spans = OtelSpans(config.otlp_endpoint, "producer", config.host_id) if config.otlp_endpoint else NO_SPANS
    tunnel = TunnelServicer(config.host_id, replica, insecure=config.tls is None, limits=caps, spans=spans)
    server.add(pb_grpc.add_TunnelServicer_to_server, tunnel, "leasenet.v1.Tunnel")
    # the one place that says which VM records a (re-)registration writes: in-process VMs all of them,
    # in bulk with the host record; supervised VMs only those healthy now (the rest come as they heal)
    registration = Liveness(store, config.host_id, lambda: [
        host_record(config, tunnel.address), *(vm_records(config) if supervised is None else supervised.registered())],
        config.liveness_ttl_s)
    actors = {vm.vm_id: VmActor(vm, handlers, history, claim_is_current=lambda v, token: holds_claim(
                                    replica.state, v, token), queue_limit=caps.vm_queue,
                                timeout_s=caps.handler_timeout)
              for vm in vm_records(config)}
    supervised = None if in_process else SupervisedVms(vm_records(config), actors, config.vm, registration)
    unwatch = metrics.TUNNEL_STREAMS.watch(lambda: {(): tunnel.streams})
    unwatch_vms = metrics.VMS.watch(supervised.states) if supervised is not None else (lambda: None)
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
                if supervised is not None:  # each VM registers itself once healthy
                    background += supervised.start(tasks)
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
                    Step("stop taking frames", lambda: _stop_taking(server, tunnel), 1.0) if serving else None,
                    Step("let the requests in flight finish", lambda: _idle(actors.values()), DRAIN_LIMIT_S),
                    Step("deregister", lambda: registration.deregister(keep_alive), 2.0) if registered else None,
                    Step("stop the tunnel server", lambda: server.stop(0.5), 1.5) if serving else None,
                    Step("stop the VMs", lambda: _stop(actors.values(), supervised),
                         2.0 + (config.vm.stop_grace_s + 1.0 if supervised is not None else 0.0)),
                    Step("close the channels to the VMs' servers", tunnel.vm_channels.close, 1.0),
                    Step("export the last spans", lambda: asyncio.to_thread(spans.close), 6.0)
                    if spans.enabled else None,
                ])
                cancel_all(background)
    finally:
        unwatch()
        unwatch_vms()
        if supervised is not None:
            supervised.close()
        if history is not None:  # after the actors, which write to it, have ended
            history.stream.close()


async def _stop_taking(server: Server, tunnel: TunnelServicer) -> None:
    """New frames and calls are refused from now on (never run: the consumer host retries them on
    another VM); those already taken finish (_idle)."""
    tunnel.draining = True
    await server.set_serving(False)


async def _idle(actors: Iterable[VmActor]) -> None:
    for actor in actors:
        await actor.idle()


async def _stop(actors: Iterable[VmActor], supervised: SupervisedVms | None) -> None:
    if supervised is not None:  # their processes: SIGTERM, SIGKILL after --vm-stop-grace
        await supervised.stop()
    for actor in actors:
        await actor.stop()

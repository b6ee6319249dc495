"""The consumer host's end of the tunnel (SPEC §3 step 10): one long-lived bidi stream per producer
host carries every frame to it. A writer task sends whatever is queued as one FrameBatch, so a busy
stream batches; a reader task matches answers to waiting requests by frame id.

Each frame's life cycle is consumer_host/frames.py's table, driven here: when a stream ends, each
waiting request learns which side of the break its frame was on: NotDelivered (never written: safe
to retry anywhere) or DeliveryUnknown (written: it may have run). What to do then is
consumer_host/failover.py's verdict."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio

from consumer_host.failover import Happened
from consumer_host.frames import HAPPENED, Event, FrameStateError, State, advance
from wire import metrics, rpc, version
from wire.errors import VersionMismatch
from wire.v1 import tunnel_pb2 as pb
from wire.v1 import tunnel_pb2_grpc as pb_grpc
from wire.tls import Kind, TlsMaterial

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0
# Batching where the stream is busy: a stream message costs about as much CPU as a dozen frames
# inside one, and frames reach the writer one at a time even under load. So when frames arrive
# fast enough that at least MIN_BATCH come within LINGER_S and some frames await answers, the
# writer gathers before it sends: until as many frames are queued as await answers (in a steady
# flow their answers bring about as many new frames; at most BATCH_FRAMES), or LINGER_S passed.
# A quiet or slow stream sends at once, so low load sees no added latency.
# See bench/PROFILE.md for the measurements behind these numbers.
MIN_BATCH = 8
BATCH_FRAMES = 32
LINGER_S = 0.005
# one stream message stays far below rpc.MAX_MESSAGE_BYTES (3 MiB) although a payload may be 1 MiB
MAX_BATCH_BYTES = 1024 * 1024


class TunnelFailure(Exception):
    """A frame got no answer; `happened` says why, for the failover verdict. The text is for the
    consumer host's log (it names the producer host), never for a consumer VM."""

    happened: Happened


class NotDelivered(TunnelFailure):
    """The frame never left this host."""

    happened = Happened.NOT_DELIVERED


class DeliveryUnknown(TunnelFailure):
    """The frame was sent, then the stream broke: it may or may not have run."""

    happened = Happened.DELIVERY_UNKNOWN


class NoAnswer(TunnelFailure):
    """The deadline passed before the answer came (the frame may have run)."""

    happened = Happened.NO_ANSWER


FAILURE: dict[Happened, type[TunnelFailure]] = {cls.happened: cls for cls in (NotDelivered, DeliveryUnknown)}


class _Pending:
    """A frame on this tunnel, the request waiting for its answer, and where the frame is in its life."""

    __slots__ = ("frame", "future", "state")

    def __init__(self, frame: pb.Frame, future: asyncio.Future[pb.Frame]) -> None:
        self.frame, self.future, self.state = frame, future, State.QUEUED


class TunnelClient:
    def __init__(self, address: str, on_broken: Callable[[str], None], tls: TlsMaterial | None = None) -> None:
        self.address = address
        self._tls = tls  # ours, presented to the producer host; None: plaintext (--insecure)
        self._on_broken = on_broken
        self._frames: dict[int, _Pending] = {}  # every frame not yet answered, failed or given up, by id
        self._outbox: list[_Pending] = []  # the QUEUED ones among them, in order (and some given up since)
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._gap = 1.0  # moving average of the time between two frames, in seconds
        self._last_at = self._loop.time()
        self.broken: str | None = None
        self._gathered: asyncio.Future[None] | None = None  # set while the writer gathers a batch
        self._gather_target = 0
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    def start(self) -> TunnelClient:
        self._channel = rpc.channel(self.address, self._tls, Kind.PRODUCER)  # in the loop: start() runs in it
        # a context of its own: the request that happens to open the stream must not lend it its
        # trace id (log records) or current span (the stream outlives the request)
        self._task = self._loop.create_task(self._run(), name=f"tunnel to {self.address}",
                                            context=contextvars.Context())
        return self

    async def exchange(self, frame: pb.Frame, timeout_s: float) -> pb.Frame:
        """Send one frame and wait for its answer. NotDelivered or DeliveryUnknown if the stream ends
        first, NoAnswer after timeout_s."""
        if self.broken is not None:
            raise NotDelivered(self.broken)
        future: asyncio.Future[pb.Frame] = self._loop.create_future()
        frame.id = next(self._ids)
        pending = self._frames[frame.id] = _Pending(frame, future)
        self._outbox.append(pending)
        self._wake.set()
        if self._gathered is not None and len(self._outbox) >= self._gather_target:
            _resolve(self._gathered)
        now = self._loop.time()
        self._gap += (now - self._last_at - self._gap) * 0.1
        self._last_at = now
        # a bare timer on the future: a third of the CPU of asyncio.timeout() (bench/PROFILE.md)
        timer = self._loop.call_at(now + timeout_s, _expire, future)
        try:
            return await future
        except BaseException:
            # the deadline passed or the caller left: an answer that still comes is dropped
            if self._frames.pop(frame.id, None) is not None:
                pending.state = advance(pending.state, Event.GIVEN_UP)
            raise
        finally:
            timer.cancel()

    async def ready(self) -> bool:
        """The host pair's channel is connected, or connects within CONNECT_TIMEOUT_S: a call opened
        on it may reach the producer host; one that cannot connect was never sent anywhere."""
        channel = self._channel
        if channel is None or self.broken is not None:
            return False
        if channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return True
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await channel.channel_ready()
        except (TimeoutError, grpc.aio.UsageError):  # UsageError: the tunnel broke and closed it meanwhile
            return False
        return True

    def call(self, timeout_s: float) -> grpc.aio.StreamStreamCall:
        """A transparent gRPC call's own stream (Tunnel.Call) on this host pair's channel: HTTP/2
        gives it its own flow control and cancellation; the Exchange stream is not involved."""
        if self._channel is None:
            raise NotDelivered(f"tunnel to producer host {self.address} is not started")
        return pb_grpc.TunnelStub(self._channel).Call(timeout=timeout_s, metadata=version.metadata())

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        channel = self._channel
        assert channel is not None, "start() creates the channel"

        async def connect() -> grpc.aio.StreamStreamCall:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await channel.channel_ready()
            return pb_grpc.TunnelStub(channel).Exchange(metadata=version.metadata())

        try:
            await self.carry(connect)
        finally:
            await channel.close()

    async def carry(self, connect: Callable[[], Awaitable[grpc.aio.StreamStreamCall]]) -> None:
        """Open one stream and carry frames over it until it ends, then fail every frame left
        unanswered on its side of the break. The reason names the producer host: it is for our log."""
        reason = f"tunnel to producer host {self.address} closed"
        refused = False
        try:
            call = await connect()
            reader = self._loop.create_task(self._read(call))
            try:
                await self._write(call, reader)
            finally:
                reader.cancel()
        except TimeoutError:
            reason = f"cannot connect to producer host {self.address}"
        except grpc.aio.AioRpcError as exc:
            reason = f"tunnel to producer host {self.address} broke: {exc.code().name} {exc.details() or ''}".strip()
            # refused whole before a frame was read (producer_host/service.py): none of them ran
            refused = isinstance(rpc.error_from_rpc(exc, f"producer host {self.address}"), VersionMismatch)
        except asyncio.CancelledError:
            reason = f"tunnel to producer host {self.address} was closed"
            raise
        except Exception as exc:
            reason = f"tunnel to producer host {self.address} broke: {exc!r}"
        finally:
            self._fail_all(reason, Event.STREAM_REFUSED if refused else Event.STREAM_ENDED)

    async def _write(self, call: grpc.aio.StreamStreamCall, reader: asyncio.Task[None]) -> None:
        while not reader.done():
            await self._wake.wait()
            self._wake.clear()
            awaiting = len(self._frames) - len(self._outbox)  # about how many were sent and await answers
            if awaiting > 0 and self._gap * MIN_BATCH < LINGER_S:
                await self._gather(min(BATCH_FRAMES, max(2, awaiting)))
            if reader.done():
                break  # the stream ended meanwhile: what is queued stays QUEUED (NotDelivered)
            batch, self._outbox = self._outbox, []
            # a frame whose request already gave up (its future is done) is not sent at all
            queued = [p for p in batch if p.state is State.QUEUED and not p.future.done()]
            if not await self._send(call, queued):
                break  # the call had already finished: the reader is about to say why
        await reader  # surface why the stream ended

    async def _send(self, call: grpc.aio.StreamStreamCall, queued: list[_Pending]) -> bool:
        """Write the queued frames, as many per stream message as fit; False if the call refused
        because it had already finished (then they are QUEUED again, and fail as NotDelivered)."""
        while queued:
            chunk, queued = _take(queued)
            _advance(chunk, State.QUEUED, Event.WRITE_BEGAN)
            try:
                await call.write(pb.FrameBatch(frames=[p.frame for p in chunk]))
            except asyncio.InvalidStateError:
                # "RPC already finished": the call checks that before it sends anything
                _advance(chunk, State.WRITING, Event.WRITE_REFUSED)
                self._outbox[:0] = [p for p in chunk if p.state is State.QUEUED] + queued
                return False
            except BaseException:
                # anything else may have failed after sending: the chunk stays WRITING (unknown)
                self._outbox[:0] = queued
                raise
            _advance(chunk, State.WRITING, Event.WRITE_DONE)
            metrics.TUNNEL_OUT.inc(len(chunk))
        return True

    async def _gather(self, target: int) -> None:
        """Wait until `target` frames are queued (exchange() says so) or LINGER_S passed."""
        if len(self._outbox) >= target:
            return
        self._gathered, self._gather_target = self._loop.create_future(), target
        timer = self._loop.call_later(LINGER_S, _resolve, self._gathered)
        try:
            await self._gathered
        finally:
            timer.cancel()
            self._gathered = None

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for batch in call:
                metrics.TUNNEL_IN.inc(len(batch.frames))
                for frame in batch.frames:
                    pending = self._frames.get(frame.id)
                    if pending is None:
                        continue  # its request gave up (deadline): the answer is dropped
                    try:
                        pending.state = advance(pending.state, Event.ANSWER)
                    except FrameStateError as exc:  # the producer host answered a frame it was never sent
                        log.warning("tunnel to %s: frame %d: %s; answer dropped", self.address, frame.id, exc)
                        continue
                    del self._frames[frame.id]
                    if not pending.future.done():
                        pending.future.set_result(frame)
        finally:
            self._wake.set()  # let the writer notice

    def _fail_all(self, reason: str, ended: Event = Event.STREAM_ENDED) -> None:
        """The stream ended (or was refused): every frame not yet answered fails on its side of the break."""
        self.broken = reason
        for pending in self._frames.values():
            pending.state = advance(pending.state, ended)
            if not pending.future.done():
                pending.future.set_exception(FAILURE[HAPPENED[pending.state]](reason))
        had_traffic = bool(self._frames)
        self._outbox, self._frames = [], {}
        log.warning("%s%s", reason, " (failing its requests)" if had_traffic else "")
        self._on_broken(self.address)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[pb.Frame]) -> None:
    if not future.done():
        future.set_exception(NoAnswer("no answer before the deadline"))


def _advance(chunk: list[_Pending], state: State, event: Event) -> None:
    """The event for every frame of a written chunk still in `state` (others were answered or given
    up while the write was under way)."""
    for pending in chunk:
        if pending.state is state:
            pending.state = advance(state, event)


def _take(frames: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
    """The first frames that fit in one stream message (at least one), and the rest."""
    if len(frames) == 1:
        return frames, []
    size = 0
    for i, pending in enumerate(frames):
        size += len(pending.frame.payload) + 256
        if size > MAX_BATCH_BYTES and i > 0:
            return frames[:i], frames[i:]
    return frames, []


class Tunnels:
    """The tunnel to each producer host, opened on first use and reopened after a break."""

    def __init__(self, on_broken: Callable[[str], None], tls: TlsMaterial | None = None) -> None:
        self._on_broken = on_broken
        self._tls = tls
        self._clients: dict[str, TunnelClient] = {}

    def to(self, address: str) -> TunnelClient:
        client = self._clients.get(address)
        if client is None or client.broken is not None:
            client = self._clients[address] = TunnelClient(address, self._on_broken, self._tls).start()
        return client

    def open_streams(self) -> dict[tuple[str, ...], float]:
        """For leasenet_tunnel_streams: tunnels started and not broken."""
        return {(): sum(c.broken is None for c in self._clients.values())}

    async def close(self) -> None:
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()

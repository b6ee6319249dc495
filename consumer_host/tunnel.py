"""The consumer host's end of the tunnel (SPEC §3 step 10): one long-lived bidi stream per producer
host carries every frame to it. A writer task sends whatever is queued as one FrameBatch, so a busy
stream batches; a reader task matches answers to waiting requests by frame id.

When a stream breaks, each waiting request learns which side of the break it was on:
NotDelivered (never written: safe to retry anywhere) or DeliveryUnknown (written: it may have run)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import grpc.aio

from wire import rpc
from wire.v1 import tunnel_pb2 as pb
from wire.v1 import tunnel_pb2_grpc as pb_grpc

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
# one stream message stays far below rpc.MAX_MESSAGE_BYTES (4 MiB) although a payload may be 1 MiB
MAX_BATCH_BYTES = 1024 * 1024


class NotDelivered(Exception):
    """The frame never left this host."""


class DeliveryUnknown(Exception):
    """The frame was sent, then the stream broke: it may or may not have run."""


class TunnelClient:
    def __init__(self, address: str, on_broken: Callable[[str], None]) -> None:
        self.address = address
        self._on_broken = on_broken
        self._outbox: list[tuple[pb.Frame, asyncio.Future[pb.Frame]]] = []
        self._sent: dict[int, asyncio.Future[pb.Frame]] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._gap = 1.0  # moving average of the time between two frames, in seconds
        self._last_at = self._loop.time()
        self.broken: str | None = None
        self._gathered: asyncio.Future[None] | None = None  # set while the writer gathers a batch
        self._gather_target = 0
        self.frames_sent = 0
        self.batches_sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> TunnelClient:
        self._task = self._loop.create_task(self._run(), name=f"tunnel to {self.address}")
        return self

    async def exchange(self, frame: pb.Frame, timeout_s: float) -> pb.Frame:
        """Send one frame and wait for its answer; TimeoutError after timeout_s (it may have run)."""
        if self.broken is not None:
            raise NotDelivered(self.broken)
        future: asyncio.Future[pb.Frame] = self._loop.create_future()
        frame.id = next(self._ids)
        self._outbox.append((frame, future))
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
            # deadline or the caller gave up: the answer, if any, is dropped when it arrives
            self._sent.pop(frame.id, None)
            raise
        finally:
            timer.cancel()

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        channel = rpc.channel(self.address)
        reason = f"tunnel to producer host {self.address} closed"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await channel.channel_ready()
            call = pb_grpc.TunnelStub(channel).Exchange()
            reader = asyncio.get_running_loop().create_task(self._read(call))
            try:
                await self._write(call, reader)
            finally:
                reader.cancel()
        except TimeoutError:
            reason = f"cannot connect to producer host {self.address}"
        except grpc.aio.AioRpcError as exc:
            reason = f"tunnel to producer host {self.address} broke: {exc.code().name} {exc.details() or ''}".strip()
        except asyncio.CancelledError:
            reason = f"tunnel to producer host {self.address} was closed"
            raise
        except Exception as exc:  # e.g. a write on a call that just ended
            reason = f"tunnel to producer host {self.address} broke: {exc!r}"
        finally:
            self._fail_all(reason)
            await channel.close()

    async def _write(self, call: grpc.aio.StreamStreamCall, reader: asyncio.Task[None]) -> None:
        while not reader.done():
            await self._wake.wait()
            self._wake.clear()
            if self._sent and self._gap * MIN_BATCH < LINGER_S:
                await self._gather(min(BATCH_FRAMES, max(2, len(self._sent))))
                if reader.done():
                    break  # the stream ended meanwhile: what is queued was never sent (NotDelivered)
            batch, self._outbox = self._outbox, []
            live = [(f, fut) for f, fut in batch if not fut.done()]
            while live:
                chunk, live = _take(live)
                for frame, future in chunk:
                    self._sent[frame.id] = future
                try:
                    await call.write(pb.FrameBatch(frames=[f for f, _ in chunk]))
                except BaseException:
                    self._outbox[:0] = live  # never written: they fail as NotDelivered
                    raise
                self.frames_sent += len(chunk)
                self.batches_sent += 1
        reader.result()  # surface why the reader ended

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
                for frame in batch.frames:
                    future = self._sent.pop(frame.id, None)
                    if future is not None and not future.done():
                        future.set_result(frame)
        finally:
            self._wake.set()  # let the writer notice

    def _fail_all(self, reason: str) -> None:
        self.broken = reason
        for _, future in self._outbox:
            if not future.done():
                future.set_exception(NotDelivered(reason))
        for future in self._sent.values():
            if not future.done():
                future.set_exception(DeliveryUnknown(reason))
        had_traffic = bool(self._outbox or self._sent)
        self._outbox, self._sent = [], {}
        log.warning("%s%s", reason, " (failing its requests)" if had_traffic else "")
        self._on_broken(self.address)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[pb.Frame]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _take(frames: list[tuple[pb.Frame, asyncio.Future[pb.Frame]]],
          ) -> tuple[list[tuple[pb.Frame, asyncio.Future[pb.Frame]]], list[tuple[pb.Frame, asyncio.Future[pb.Frame]]]]:
    """The first frames that fit in one stream message (at least one), and the rest."""
    if len(frames) == 1:
        return frames, []
    size = 0
    for i, (frame, _) in enumerate(frames):
        size += len(frame.payload) + 256
        if size > MAX_BATCH_BYTES and i > 0:
            return frames[:i], frames[i:]
    return frames, []


class Tunnels:
    """The tunnel to each producer host, opened on first use and reopened after a break."""

    def __init__(self, on_broken: Callable[[str], None]) -> None:
        self._on_broken = on_broken
        self._clients: dict[str, TunnelClient] = {}

    def to(self, address: str) -> TunnelClient:
        client = self._clients.get(address)
        if client is None or client.broken is not None:
            client = self._clients[address] = TunnelClient(address, self._on_broken).start()
        return client

    async def close(self) -> None:
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()

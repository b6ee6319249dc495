"""One etcd LeaseKeepAlive stream per process for every lease it refreshes (SPEC §9). etcd's stream
takes any lease id in any order and answers each request with that lease's remaining TTL (0: it
expired or was revoked); a stream per refresh cost an HTTP/2 stream and a server goroutine each
time (10k pools at a 10 s TTL: ~3,000 stream set-ups per second).

etcd3aio's `keep_alive_context` opens a stream per lease and only logs failures, so the stream is
ours: opened on first use, answers matched to waiters by lease id (in order per id), and opened
anew by the next refresh after it failed or a refresh on it timed out (a hung member)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import grpc
import grpc.aio

from etcd3aio._protobuf import LeaseKeepAliveRequest
from wire.errors import StoreUnavailable

log = logging.getLogger(__name__)

OpenStream = Callable[[], grpc.aio.StreamStreamCall]


class _Stream:
    """One open LeaseKeepAlive call and the refreshes waiting for its answers."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self.waiting: dict[int, deque[asyncio.Future[int]]] = {}
        self.write_lock = asyncio.Lock()  # grpc.aio allows one write at a time
        self.reader = asyncio.get_running_loop().create_task(self._read(), name="etcd-lease-keepalive")

    @property
    def broken(self) -> bool:
        return self.reader.done() or self.call.done()

    async def refresh(self, lease_id: int) -> int:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(lease_id, deque()).append(answer)
        try:
            async with self.write_lock:
                await self.call.write(LeaseKeepAliveRequest(ID=lease_id))
            return await answer
        except asyncio.InvalidStateError:  # the call ended between our check and the write
            raise StoreUnavailable("etcd is unavailable (lease keep-alive: stream closed)") from None
        finally:
            queue = self.waiting.get(lease_id)
            if queue is not None and answer in queue:
                queue.remove(answer)

    async def _read(self) -> None:
        failure: BaseException = StoreUnavailable("etcd is unavailable (lease keep-alive: stream closed)")
        try:
            while (resp := await self.call.read()) is not grpc.aio.EOF:
                queue = self.waiting.get(resp.ID)
                if queue:
                    answer = queue.popleft()
                    if not answer.done():
                        answer.set_result(max(0, int(resp.TTL)))
        except grpc.aio.AioRpcError as exc:
            failure = exc
        finally:  # also when closed (cancelled): no refresh waits on a dead stream
            for queue in self.waiting.values():
                for answer in queue:
                    if not answer.done():
                        answer.set_exception(failure)
            self.waiting.clear()

    def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()


class KeepAliveStream:
    """Every `refresh(lease_id)` of one EtcdStore on one stream; `opened` counts the streams set up."""

    def __init__(self, open_stream: OpenStream) -> None:
        self._open = open_stream
        self._stream: _Stream | None = None
        self.opened = 0

    async def refresh(self, lease_id: int, timeout_s: float) -> int:
        stream = self._current()
        try:
            async with asyncio.timeout(timeout_s):
                return await stream.refresh(lease_id)
        except TimeoutError:
            self._drop(stream)  # a hung member: the next refresh dials again (round robin may pick another)
            raise

    def _current(self) -> _Stream:
        if self._stream is None or self._stream.broken:
            if self._stream is not None:
                log.info("etcd lease keep-alive stream ended; opening a new one")
                self._stream.close()
            self._stream = _Stream(self._open())
            self.opened += 1
        return self._stream

    def _drop(self, stream: _Stream) -> None:
        stream.close()
        if self._stream is stream:
            self._stream = None

    def close(self) -> None:
        if self._stream is not None:
            self._drop(self._stream)

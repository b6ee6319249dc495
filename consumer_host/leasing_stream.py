"""A consumer host's stream of leasing calls to one registry (Leasing.Calls, issue 19 item 3): any
number of calls in flight on one stream, each answered under its id when it completes. Opened on
first use and again after it ends; version metadata goes once, when it opens.

A stream that breaks fails the calls waiting on it as UNAVAILABLE (the caller fails over, as for a
unary call: every leasing call is safe to repeat). One the registry ends cleanly (it drains: it
answers the calls it read, reads no more, and says NOT_SERVING so that new streams go elsewhere)
left its unanswered calls unread, so each is sent once more on a new stream, as a unary call
would have gone to a serving registry in the first place. A registry that has no such method (an
older release, during a rolling upgrade) answers UNIMPLEMENTED: `supported` turns False and the
caller uses the unary methods with that registry from then on."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import grpc.aio
from google.protobuf.message import Message

from wire import rpc, version
from wire.errors import DeadlineExceeded, LeasenetError, Status, Unavailable, error_for_status
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc

# a unary method's name -> its field in a LeasingCall
FIELDS = {"RequestLease": "request", "GrowLease": "grow", "ShrinkLease": "shrink", "RenewLease": "renew",
          "ReleaseLease": "release"}


# how a stream that broke under its calls ends, when no leasenet server said why
BROKEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED})


class StreamUnsupported(LeasenetError):
    """The registry has no Leasing.Calls: ask it with unary calls."""

    code = Status.UNIMPLEMENTED


class StreamEnded(Unavailable):
    """The registry ended the stream cleanly (draining): a call still waiting was never read."""


class LeasingStream:
    def __init__(self, stub: pb_grpc.LeasingStub, agent: str) -> None:
        self._stub = stub
        self.agent = agent  # "leasing agent <address>", for sentences
        self.supported = True
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._pending: dict[int, asyncio.Future[pb.LeasingAnswer]] = {}
        self._ids = itertools.count(1)
        self._writing = asyncio.Lock()  # one write at a time on a gRPC stream

    def _open(self) -> grpc.aio.StreamStreamCall:
        call = self._stub.Calls(metadata=version.metadata())
        self._call = call
        self._reader = asyncio.get_running_loop().create_task(self._read(call))
        return call

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        error: LeasenetError = StreamEnded(f"{self.agent} ended its stream of leasing calls")
        try:
            async for answer in call:
                waiter = self._pending.pop(answer.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
                error = StreamUnsupported(f"{self.agent} has no stream of leasing calls")
            elif exc.code() in BROKEN and not rpc.is_ours(exc):
                # the stream itself broke (a registry stopping resets it, which gRPC may report as
                # INTERNAL): as for a connection lost, the calls on it fail over
                error = Unavailable(f"{self.agent}'s stream of leasing calls broke", detail=exc.details() or "")
            else:
                error = rpc.error_from_rpc(exc, self.agent)
        finally:
            # every call waiting now was written on this stream (a new one opens only after this)
            if self._call is call:
                self._call = None
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(error)
            self._pending.clear()

    async def call(self, method: str, request: Message, timeout_s: float) -> Message:
        """`method`'s answer (as the unary method's), or its error as the typed LeasenetError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            return await self._call_once(method, request, timeout_s)
        except StreamEnded:  # unread: once more, on a new stream
            return await self._call_once(method, request, max(0.0, deadline - loop.time()))

    async def _call_once(self, method: str, request: Message, timeout_s: float) -> Message:
        call = self._call or self._open()
        call_id = next(self._ids)
        waiter = asyncio.get_running_loop().create_future()
        self._pending[call_id] = waiter
        try:
            try:
                async with self._writing:
                    await call.write(pb.LeasingCall(id=call_id, timeout_ms=int(timeout_s * 1000),
                                                    **{FIELDS[method]: request}))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass  # the stream ended under the write: its reader fails the waiter with the reason
            answer = await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"{self.agent} did not answer within {timeout_s:g} s") from None
        finally:
            self._pending.pop(call_id, None)
        which = answer.WhichOneof("answer")
        if which == "error":
            raise error_for_status(Status(answer.error.code), answer.error.message, answer.error.error_type)
        return getattr(answer, which)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()

"""A consumer host's stream of leasing calls to one registry (Leasing.Calls, issue 19 item 3): any
number of calls in flight on one stream, each answered under its id when it completes. Opened on
first use and again after it ends; version metadata goes once, when it opens.

A stream that ends fails the calls waiting on it as UNAVAILABLE (the caller fails over, as for a
unary call: every leasing call is safe to repeat). A registry that has no such method (an older
release, during a rolling upgrade) answers UNIMPLEMENTED: `supported` turns False and the caller
uses the unary methods with that registry from then on."""

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


class StreamUnsupported(LeasenetError):
    """The registry has no Leasing.Calls: ask it with unary calls."""

    code = Status.UNIMPLEMENTED


class LeasingStream:
    def __init__(self, stub: pb_grpc.LeasingStub, agent: str) -> None:
        self._stub = stub
        self.agent = agent  # "leasing agent <address>", for sentences
        self.supported = True
        self._call: grpc.aio.StreamStreamCall | None = None
        self._pending: dict[int, asyncio.Future[pb.LeasingAnswer]] = {}
        self._ids = itertools.count(1)
        self._writing = asyncio.Lock()  # one write at a time on a gRPC stream

    def _open(self) -> grpc.aio.StreamStreamCall:
        call = self._stub.Calls(metadata=version.metadata())
        self._call = call
        asyncio.get_running_loop().create_task(self._read(call))
        return call

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        error: LeasenetError = Unavailable(f"{self.agent} ended its stream of leasing calls")
        try:
            async for answer in call:
                waiter = self._pending.pop(answer.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
                error = StreamUnsupported(f"{self.agent} has no stream of leasing calls")
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

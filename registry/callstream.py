"""Leasing.Calls (issue 19 item 3): many leasing calls in flight on one stream. Each request message
is one call, run as a task of its own as soon as it is read and answered when it completes, in any
order, under the id it gave. Per call this costs the registry a message each way instead of a unary
call (gRPC's own cost of a unary call is 3-4 times a stream message's here: bench/PROFILE.md), and
the caller's certificate and version are checked once, when the stream opens.

A draining registry reads no more calls and ends the stream once the calls it read are answered;
the consumer host sends the unread ones again on a new stream, which goes to a serving registry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc.aio

from registry.authz import Caller
from wire import metrics
from wire.errors import DeadlineExceeded, InvalidRequest, LeasenetError
from wire.rpc import end_of_stream
from wire.v1 import registry_pb2 as pb

if TYPE_CHECKING:
    from registry.service import LeasingServicer

log = logging.getLogger(__name__)

KIND = "registry"
MAX_IN_FLIGHT = 256  # calls per stream; past it the stream is not read until one is answered
DEFAULT_TIMEOUT_S = 10.0  # a call that names no deadline
_END = pb.LeasingAnswer()  # the reader is done: no call will be added


async def serve(servicer: LeasingServicer, calls: AsyncIterator[pb.LeasingCall], context: grpc.aio.ServicerContext,
                caller: Caller, forwarded: bool) -> AsyncIterator[pb.LeasingAnswer]:
    """Answer the stream's calls until the caller closes its side (or we drain), then end."""
    answers: asyncio.Queue[pb.LeasingAnswer] = asyncio.Queue()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    running: set[asyncio.Task[None]] = set()

    async def run(call: pb.LeasingCall) -> None:
        try:
            answers.put_nowait(await answer(servicer, call, caller, forwarded))
        finally:
            slots.release()

    async def read() -> None:
        async for call in calls:
            if servicer.draining.is_set():
                break
            await slots.acquire()
            task = asyncio.create_task(run(call))
            running.add(task)
            task.add_done_callback(running.discard)

    reader = asyncio.create_task(read())
    reader.add_done_callback(lambda _: answers.put_nowait(_END))
    draining = asyncio.create_task(_cancel_when_draining(servicer.draining, reader))
    try:
        while (next_answer := await answers.get()) is not _END:
            yield next_answer
        if running:  # the caller closed its side, or we drain: the calls taken are answered first
            await asyncio.wait(set(running))
        while not answers.empty():
            yield answers.get_nowait()
        await end_of_stream(reader, context, "a leasing call")
    finally:
        draining.cancel()
        reader.cancel()
        for task in running:  # the caller went away: as a unary call's handler, its calls end
            task.cancel()


async def _cancel_when_draining(draining: asyncio.Event, reader: asyncio.Task[None]) -> None:
    await draining.wait()
    reader.cancel()


async def answer(servicer: LeasingServicer, call: pb.LeasingCall, caller: Caller,
                 forwarded: bool) -> pb.LeasingAnswer:
    """One call's answer: its result, or its error as a unary call's status would say it."""
    which = call.WhichOneof("call")
    timeout = call.timeout_ms / 1000 or DEFAULT_TIMEOUT_S
    deadline = asyncio.get_running_loop().time() + timeout

    def remaining() -> float:
        return deadline - asyncio.get_running_loop().time()

    try:
        async with asyncio.timeout(timeout):
            match which:
                case "request":
                    return pb.LeasingAnswer(id=call.id, lease=await servicer.request_lease(
                        call.request, caller, forwarded, remaining))
                case "grow":
                    return pb.LeasingAnswer(id=call.id, lease=await servicer.grow_lease(
                        call.grow, caller, forwarded, remaining))
                case "shrink":
                    return pb.LeasingAnswer(id=call.id, lease=await servicer.shrink_lease(call.shrink, caller))
                case "renew":
                    return pb.LeasingAnswer(id=call.id, renewed=await servicer.renew_lease(call.renew, caller))
                case "release":
                    return pb.LeasingAnswer(id=call.id, released=await servicer.release_lease(call.release, caller))
                case _:
                    raise InvalidRequest("a leasing call names none of request, grow, shrink, renew or release")
    except TimeoutError:
        error: LeasenetError = DeadlineExceeded(f"the {which} call was not done within its {timeout:g} s")
    except LeasenetError as exc:
        error = exc
        if exc.detail:
            log.info("%s in Calls (%s): %s (%s)", type(exc).__name__, which, exc.message, exc.detail)
    except Exception:  # noqa: BLE001 - one call's bug must not end the stream's other calls
        log.exception("unexpected error in Calls (%s)", which)
        return pb.LeasingAnswer(id=call.id, error=pb.CallError(
            code=grpc.StatusCode.INTERNAL.value[0], message="internal error in Calls; see the server log"))
    metrics.answered(KIND, error)
    return pb.LeasingAnswer(id=call.id, error=pb.CallError(code=int(error.code), message=error.message,
                                                           error_type=type(error).__name__))

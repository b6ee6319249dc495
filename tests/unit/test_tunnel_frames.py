"""A tunnel frame's life cycle: the table says which side of a broken stream each frame was on, and
the tunnel follows it, including when a write fails because the stream had already ended (the
producer host was just killed): a frame that never left the host is always NotDelivered."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from consumer_host.frames import TRANSITIONS, Event, FrameStateError, State, advance
from consumer_host.tunnel import DeliveryUnknown, NotDelivered, TunnelClient, TunnelFailure
from tests.conftest import eventually_async
from wire.v1 import tunnel_pb2 as pb

LIVE = (State.QUEUED, State.WRITING, State.WRITTEN)
BIG = 600 * 1024  # two such payloads do not fit one stream message: each frame is a chunk of its own


class EndingCall:
    """A tunnel stream whose producer host dies after receiving `survives` stream messages: reading
    then ends with UNAVAILABLE, and a later write is refused as grpc.aio refuses it."""

    def __init__(self, survives: int) -> None:
        self.survives = survives
        self.received: list[list[int]] = []
        self.ended = asyncio.Event()

    async def write(self, batch: pb.FrameBatch) -> None:
        if self.ended.is_set():
            raise asyncio.InvalidStateError("RPC already finished.")
        self.received.append([f.id for f in batch.frames])
        if len(self.received) == self.survives:
            self.ended.set()

    def __aiter__(self) -> EndingCall:
        return self

    async def __anext__(self) -> pb.FrameBatch:
        await self.ended.wait()
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   details="Socket closed")


def test_a_frame_never_written_ends_not_delivered_when_its_stream_ends() -> None:
    assert advance(State.QUEUED, Event.STREAM_ENDED) is State.NOT_DELIVERED
    refused = advance(advance(State.QUEUED, Event.WRITE_BEGAN), Event.WRITE_REFUSED)
    assert advance(refused, Event.STREAM_ENDED) is State.NOT_DELIVERED


def test_a_frame_whose_write_began_ends_delivery_unknown_when_its_stream_ends() -> None:
    writing = advance(State.QUEUED, Event.WRITE_BEGAN)
    assert advance(writing, Event.STREAM_ENDED) is State.DELIVERY_UNKNOWN
    assert advance(advance(writing, Event.WRITE_DONE), Event.STREAM_ENDED) is State.DELIVERY_UNKNOWN


def test_every_frame_of_a_stream_its_producer_host_refused_whole_ends_not_delivered() -> None:
    # e.g. VersionMismatch: the producer host says no before it reads a frame of the stream
    for state in LIVE:
        assert advance(state, Event.STREAM_REFUSED) is State.NOT_DELIVERED


def test_every_live_frame_has_an_end_for_a_broken_stream_and_for_a_request_that_gave_up() -> None:
    for state in LIVE:
        assert (state, Event.STREAM_ENDED) in TRANSITIONS
        assert advance(state, Event.GIVEN_UP) is State.ABANDONED


@pytest.mark.parametrize("state", [s for s in State if s not in LIVE])
def test_a_frame_that_ended_takes_no_further_event(state: State) -> None:
    for event in Event:
        with pytest.raises(FrameStateError, match=state.value):
            advance(state, event)


def test_an_answer_to_a_frame_never_sent_is_illegal() -> None:
    with pytest.raises(FrameStateError, match="queued cannot take 'answer'"):
        advance(State.QUEUED, Event.ANSWER)


async def outcome(task: asyncio.Task[pb.Frame]) -> type[BaseException] | None:
    try:
        await task
    except TunnelFailure as exc:
        return type(exc)
    return None


async def test_frames_of_a_chunk_refused_after_the_stream_ended_are_not_delivered() -> None:
    client = TunnelClient("127.0.0.1:1", on_broken=lambda address: None)  # not started: no dialing
    call = EndingCall(survives=1)
    exchanges = [asyncio.create_task(client.exchange(pb.Frame(payload=b"x" * BIG), 5.0)) for _ in range(3)]
    await eventually_async(lambda: len(client._outbox) == 3, timeout_s=5, interval_s=0.001)  # every exchange has queued its frame

    async def opened() -> EndingCall:
        return call

    await client.carry(opened)  # type: ignore[arg-type]
    assert call.received == [[1]]  # the first chunk reached the host before it died; the second was refused
    assert [await outcome(t) for t in exchanges] == [DeliveryUnknown, NotDelivered, NotDelivered]
    assert client.broken is not None and "UNAVAILABLE" in client.broken
    assert client._frames == {} and client._outbox == []


async def test_a_frame_queued_on_a_broken_tunnel_is_not_delivered() -> None:
    client = TunnelClient("127.0.0.1:1", on_broken=lambda address: None)
    call = EndingCall(survives=1)

    async def opened() -> EndingCall:
        return call

    first = asyncio.create_task(client.exchange(pb.Frame(), 5.0))
    await eventually_async(lambda: client._outbox, timeout_s=5, interval_s=0.001)
    await client.carry(opened)  # type: ignore[arg-type]
    assert await outcome(first) is DeliveryUnknown
    with pytest.raises(NotDelivered):
        await client.exchange(pb.Frame(), 5.0)

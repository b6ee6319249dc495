"""The tunnel writer's batching: a quiet stream sends each frame at once; a busy one gathers about
as many frames as await answers into one stream message, and never holds a frame past the linger."""

from __future__ import annotations

import asyncio

from consumer_host.frames import State
from consumer_host.tunnel import TunnelClient, _Pending
from tests.conftest import eventually_async
from wire.v1 import tunnel_pb2 as pb


class FakeCall:
    """Records each stream message as the frame ids it carried."""

    def __init__(self) -> None:
        self.messages: list[list[int]] = []

    async def write(self, batch: pb.FrameBatch) -> None:
        self.messages.append([f.id for f in batch.frames])


async def writer(busy: bool, awaiting: int) -> tuple[TunnelClient, FakeCall, asyncio.Task[None]]:
    client, call = TunnelClient("127.0.0.1:1", on_broken=lambda address: None), FakeCall()  # not started: no dialing
    if busy:
        client._gap = 1e-4  # frames arrive every 0.1 ms
    loop = asyncio.get_running_loop()
    for i in range(awaiting):  # frames written earlier, awaiting answers
        pending = client._frames[1000 + i] = _Pending(pb.Frame(id=1000 + i), loop.create_future())
        pending.state = State.WRITTEN
    reader = loop.create_task(asyncio.Event().wait())  # a stream that stays open
    task = loop.create_task(client._write(call, reader))  # type: ignore[arg-type]
    return client, call, task


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_quiet_stream_sends_each_frame_at_once() -> None:
    client, call, task = await writer(busy=False, awaiting=5)
    asyncio.create_task(client.exchange(pb.Frame(), 5.0))
    await eventually_async(lambda: call.messages, timeout_s=5, interval_s=0.001, what="a stream message")
    assert call.messages == [[1]]
    task.cancel()


async def test_a_busy_stream_gathers_as_many_frames_as_await_answers() -> None:
    client, call, task = await writer(busy=True, awaiting=3)
    asyncio.create_task(client.exchange(pb.Frame(), 5.0))
    await settle()  # the writer woke for frame 1 and gathers
    assert call.messages == []
    for _ in range(2):
        asyncio.create_task(client.exchange(pb.Frame(), 5.0))
    await eventually_async(lambda: call.messages, timeout_s=5, interval_s=0.001, what="a stream message")
    assert call.messages == [[1, 2, 3]]
    task.cancel()


async def test_a_gathered_frame_leaves_after_the_linger_even_if_no_other_comes() -> None:
    client, call, task = await writer(busy=True, awaiting=8)
    asyncio.create_task(client.exchange(pb.Frame(), 5.0))
    await eventually_async(lambda: call.messages, timeout_s=5, interval_s=0.001, what="a stream message")
    assert call.messages == [[1]]
    task.cancel()

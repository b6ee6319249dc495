"""A producer VM's answers go back to a consumer VM that must never learn which producer VM served
it (SPEC §10): whatever happens to the request, the sentence names no VM."""

from __future__ import annotations

import asyncio
import time

from mapping.model import HostId, ProducerVm
from producer_host.actors import Envelope, VmActor
from wire.errors import Status

VM = ProducerVm("blue", "10.1.1.7", HostId("p1"), "echo")
Answer = tuple[Status, str, bytes, bool]


def envelope(answers: asyncio.Queue[Answer], *, deadline_ms: int = 0) -> Envelope:
    return Envelope(b"x", 1, "blue/10.1.0.1", 5, deadline_ms, lambda *answer: answers.put_nowait(answer))


async def failing(payload: bytes) -> bytes:
    raise RuntimeError("boom at 10.1.1.7")


async def test_no_answer_of_a_producer_vm_names_it() -> None:
    answers: asyncio.Queue[Answer] = asyncio.Queue()
    running = asyncio.Event()

    async def stuck(payload: bytes) -> bytes:
        running.set()
        await asyncio.Event().wait()
        return b""

    broken, blocked, never_started = VmActor(VM, lambda: failing), VmActor(VM, lambda: stuck), VmActor(VM, lambda: stuck)
    broken.start()
    blocked.start()
    broken.tell(envelope(answers))  # the handler fails
    broken.tell(envelope(answers, deadline_ms=int(time.time() * 1000) - 1))  # queued past its deadline
    never_started.tell(envelope(answers))  # the VM is stopped
    blocked.tell(envelope(answers))  # running when the VM stops
    blocked.tell(envelope(answers))  # queued when the VM stops
    await running.wait()
    await broken.idle()
    await broken.stop()
    await blocked.stop()
    got = [answers.get_nowait() for _ in range(answers.qsize())]
    assert sorted(status for status, *_ in got) == sorted(
        [Status.INTERNAL, Status.DEADLINE_EXCEEDED, Status.UNAVAILABLE, Status.UNAVAILABLE, Status.UNAVAILABLE])
    for _, message, _, _ in got:
        assert VM.vm_id not in message and VM.address not in message and "boom" not in message, message


async def test_first_use_is_awaited_once_per_claim_before_its_first_call_and_a_failed_mark_runs_nothing() -> None:
    answers: asyncio.Queue[Answer] = asyncio.Queue()
    marked: list[int] = []
    ran: list[int] = []

    async def mark(token: int) -> None:
        if token == 9:
            raise ConnectionError("etcd is away")
        marked.append(token)

    async def record(payload: bytes) -> bytes:
        ran.append(len(ran))
        return payload

    actor = VmActor(VM, lambda: record)
    actor.first_use = mark
    actor.start()
    for token in (5, 5, 6, 9):
        actor.tell(Envelope(b"x", token, "blue/10.1.0.1", token, 0, lambda *answer: answers.put_nowait(answer)))
    got = [await answers.get() for _ in range(4)]
    await actor.stop()
    assert marked == [5, 6] and len(ran) == 3
    assert [(status, delivered) for status, _, _, delivered in got] == [
        (Status.OK, True), (Status.OK, True), (Status.OK, True), (Status.UNAVAILABLE, False)]

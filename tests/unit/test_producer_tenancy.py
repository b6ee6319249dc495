"""Producer VM tenancy and limits (SPEC §10, issue 11) on actors in this process: a fresh handler
per claim, the fencing token checked again when a request starts, every call under its deadline,
bounded queues, and CPU-heavy work that leaves the host's other VMs running."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable

import pytest

from mapping.model import HostId, ProducerVm
from producer_host import limits
from producer_host.actors import Envelope, History, VmActor
from producer_host.handlers import Handler, HandlerError, handler_maker, load_handler
from producer_host.limits import Limits
from producer_host.validate import validate
from tests.unit.test_validate import ADDRESS, C1, ME, frame, state
from wire.errors import Status
from wire.limits import MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES
from wire.verdict import Refusal

VM = ProducerVm("blue", "10.1.1.7", HostId("p1"), "kv")
NEIGHBOUR = ProducerVm("blue", "10.1.1.8", HostId("p1"), "echo")
Answer = tuple[Status, str, bytes, bool]


class Caller:
    """Sends envelopes to actors and collects their answers in order."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[tuple[int, Answer]] = asyncio.Queue()

    def envelope(self, payload: bytes, request_id: int, token: int = 5, deadline_ms: int = 0) -> Envelope:
        return Envelope(payload, request_id, "blue/10.1.0.1", token, deadline_ms,
                        lambda *answer: self.answers.put_nowait((request_id, answer)))

    async def ask(self, actor: VmActor, payload: bytes, request_id: int = 1, **kwargs: int) -> Answer:
        actor.tell(self.envelope(payload, request_id, **kwargs))
        got_id, answer = await self.answers.get()
        assert got_id == request_id
        return answer


def gated() -> tuple[asyncio.Event, asyncio.Event, Callable[[], Handler]]:
    """A handler that says when it started and answers only once released."""
    started, release = asyncio.Event(), asyncio.Event()

    def make() -> Handler:
        async def handle(payload: bytes) -> bytes:
            started.set()
            await release.wait()
            return payload
        return handle
    return started, release, make


def no_vm_named(message: str) -> bool:
    return VM.vm_id not in message and VM.address not in message and "p1" not in message


async def test_a_new_claim_gets_a_fresh_kv_store_and_an_ended_claim_s_store_is_wiped() -> None:
    caller = Caller()
    actor = VmActor(VM, handler_maker("kv"))
    actor.start()
    assert (await caller.ask(actor, b"PUT secret a", token=5))[2] == b"OK"
    assert (await caller.ask(actor, b"GET secret", token=5))[2] == b"a"
    assert (await caller.ask(actor, b"GET secret", token=9))[2] == b""  # the next lessee's claim
    assert (await caller.ask(actor, b"PUT mine b", token=9))[2] == b"OK"
    actor.claim_ended(9)
    assert (await caller.ask(actor, b"GET mine", token=9))[2] == b""
    await actor.stop()


async def test_a_queued_request_whose_claim_ended_is_dropped_not_run() -> None:
    caller, current, out = Caller(), {5}, io.StringIO()
    started, release, make = gated()
    actor = VmActor(VM, make, History(out), claim_is_current=lambda vm, token: token in current)
    actor.start()
    actor.tell(caller.envelope(b"running", 1))
    actor.tell(caller.envelope(b"queued", 2))
    await started.wait()
    current.clear()  # the claim ends while request 2 waits behind request 1
    release.set()
    answers = dict([await caller.answers.get(), await caller.answers.get()])
    assert answers[1] == (Status.OK, "", b"running", True)
    assert answers[2] == (Status.FAILED_PRECONDITION, limits.CLAIM_ENDED, b"", False)
    assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()] == [1]
    assert actor.dropped == 1
    await actor.stop()


async def test_a_full_vm_queue_answers_resource_exhausted_without_running() -> None:
    caller = Caller()
    started, release, make = gated()
    actor = VmActor(VM, make, queue_limit=2)
    actor.start()
    actor.tell(caller.envelope(b"x", 1))
    await started.wait()  # request 1 runs
    for i in (2, 3, 4):  # 2 and 3 fill the queue
        actor.tell(caller.envelope(b"x", i))
    request_id, (code, message, _, delivered) = await caller.answers.get()
    assert (request_id, code, delivered) == (4, Status.RESOURCE_EXHAUSTED, False)
    assert message == limits.vm_queue_full(2) and no_vm_named(message)
    release.set()
    assert sorted([(await caller.answers.get())[0] for _ in range(3)]) == [1, 2, 3]
    await actor.stop()


async def test_a_handler_past_the_request_s_deadline_is_stopped_with_a_sentence_naming_no_vm() -> None:
    caller = Caller()
    actor = VmActor(VM, lambda: load_handler("tests.handlers:sleepy", {"seconds": "3600"}))
    actor.start()
    code, message, payload, delivered = await caller.ask(actor, b"x", deadline_ms=int(time.time() * 1000) + 100)
    assert (code, message, payload, delivered) == (Status.DEADLINE_EXCEEDED, limits.DEADLINE_WHILE_RUNNING, b"", True)
    assert not actor.busy
    capped = VmActor(VM, lambda: load_handler("tests.handlers:sleepy", {"seconds": "3600"}), timeout_s=0.1)
    capped.start()
    assert (await caller.ask(capped, b"x"))[0] is Status.DEADLINE_EXCEEDED  # no deadline: the host's cap
    await actor.stop()
    await capped.stop()


async def test_failing_and_misbehaving_handlers_answer_generic_sentences() -> None:
    caller = Caller()

    async def raises(payload: bytes) -> bytes:
        raise TimeoutError(f"socket to {VM.address} timed out")

    async def not_bytes(payload: bytes) -> bytes:
        return f"answer of {VM.vm_id}"  # type: ignore[return-value]

    async def too_large(payload: bytes) -> bytes:
        return b"x" * (MAX_PAYLOAD_BYTES + 1)

    for handler, message in ((raises, limits.HANDLER_FAILED), (not_bytes, limits.BAD_ANSWER),
                             (too_large, limits.BAD_ANSWER)):
        actor = VmActor(VM, lambda h=handler: h)  # type: ignore[misc]
        actor.start()
        assert await caller.ask(actor, b"x") == (Status.INTERNAL, message, b"", True)
        assert no_vm_named(message)
        await actor.stop()


async def test_work_is_capped_by_its_option() -> None:
    handle = load_handler("work", {"iterations": "10", "max_iterations": "1000"})
    assert len(await handle(b"")) == 64
    assert len(await handle(b"1000")) == 64
    with pytest.raises(HandlerError, match="1001 iterations exceed this service's cap of 1000"):
        await handle(b"1001")
    with pytest.raises(ValueError, match="rejected its options"):
        load_handler("work", {"iterations": "2000", "max_iterations": "1000"})


async def test_a_neighbour_vm_is_answered_while_runaway_work_runs_on_the_same_host() -> None:
    """Both VMs share this event loop, as on a producer host: the neighbour's echo requests are all
    answered before the long work finishes (work yields between chunks), and the longest an echo
    waited is printed (the bound the chunk size gives: about one chunk)."""
    caller, neighbour_caller = Caller(), Caller()
    busy = VmActor(VM, handler_maker("work", {"max_iterations": "10000000"}))
    neighbour = VmActor(NEIGHBOUR, handler_maker("echo"))
    busy.start()
    neighbour.start()
    busy.tell(caller.envelope(b"300000", 1))
    await asyncio.sleep(0)  # the work starts
    waits = []
    for i in range(20):
        sent = time.perf_counter()
        assert (await neighbour_caller.ask(neighbour, b"ping", i))[2] == b"ping"
        waits.append(time.perf_counter() - sent)
        assert caller.answers.empty(), f"the work finished before echo {i}: the echoes did not overlap it"
    request_id, (code, *_) = await caller.answers.get()
    assert (request_id, code) == (1, Status.OK)
    print(f"\nneighbour echo wait during 300000 rounds of work: max {max(waits) * 1000:.1f} ms, "
          f"median {sorted(waits)[10] * 1000:.1f} ms")
    await busy.stop()
    await neighbour.stop()


def test_an_oversized_payload_is_refused_with_leasenet_s_sentence_and_fits_grpc_s_limit() -> None:
    verdict = validate(frame(payload_bytes=MAX_PAYLOAD_BYTES + 1), state(), ME, ADDRESS, C1)
    assert isinstance(verdict, Refusal) and verdict.code is Status.INVALID_ARGUMENT
    assert verdict.message == f"payload of {MAX_PAYLOAD_BYTES + 1} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
    assert not isinstance(validate(frame(payload_bytes=MAX_PAYLOAD_BYTES), state(), ME, ADDRESS, C1), Refusal)
    assert MAX_MESSAGE_BYTES > 2 * MAX_PAYLOAD_BYTES  # a full batch plus one frame of the largest payload


def test_every_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="vm-queue must be positive, not 0"):
        Limits(vm_queue=0)

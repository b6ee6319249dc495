"""Transparent calls' pure parts and the VM's one slot: VmActor.turn shares the Send envelopes'
inbox, order and refusals; a VIP endpoint's config is checked at start; the caller's metadata is
filtered; a call's kind comes from its message counts."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest

from consumer_host.config import load_config
from consumer_host.vip import forwarded, marked_idempotent
from leasenet.cluster import ConsumerVm, consumer_toml
from mapping.model import HostId, ProducerVm
from producer_host import limits
from producer_host.actors import Envelope, History, Refused, VmActor
from wire.errors import Status
from wire.metrics import call_kind

VM = ProducerVm("blue", "10.1.1.7", HostId("p1"), "echo")
Answer = tuple[Status, str, bytes, bool]


def envelope(answers: asyncio.Queue[Answer], request_id: int, *, token: int = 5) -> Envelope:
    return Envelope(b"x", request_id, "blue/10.1.0.1", token, 0, lambda *answer: answers.put_nowait(answer))


async def test_a_turn_waits_behind_the_queued_sends_holds_the_vm_and_is_recorded() -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def handler(payload: bytes) -> bytes:
        order.append("send")
        await release.wait()
        return payload

    out = io.StringIO()
    actor = VmActor(VM, lambda: handler, History(out))
    actor.start()
    answers: asyncio.Queue[Answer] = asyncio.Queue()
    actor.tell(envelope(answers, 1))

    async def call() -> None:
        async with actor.turn(2, "blue/10.1.0.1", 5, 0) as turn:
            order.append("call")
            assert actor.busy
            turn.ok = True

    task = asyncio.get_running_loop().create_task(call())
    await asyncio.sleep(0)  # one turn of the loop: the task queues its turn (deterministic, not a wait)
    assert order == ["send"] and actor.inbox.qsize() == 1  # the call waits for the Send ahead of it
    release.set()
    await task
    actor.tell(envelope(answers, 3))
    await actor.idle()
    assert order == ["send", "call", "send"]
    await actor.stop()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["request_id"], r["ok"]) for r in records] == [(1, True), (2, True), (3, True)]


async def test_a_turn_is_refused_like_a_send_when_the_inbox_is_full_the_deadline_passed_or_the_claim_ended() -> None:
    actor = VmActor(VM, lambda: _never, queue_limit=1, claim_is_current=lambda vm, token: token == 5)
    actor.start()
    answers: asyncio.Queue[Answer] = asyncio.Queue()
    actor.tell(envelope(answers, 1))  # runs forever
    await asyncio.sleep(0)
    actor.tell(envelope(answers, 2))  # fills the inbox
    with pytest.raises(Refused) as full:
        async with actor.turn(3, "blue/10.1.0.1", 5, 0):
            pytest.fail("a turn past a full inbox must not run")
    assert (full.value.status, full.value.message) == (Status.RESOURCE_EXHAUSTED, limits.vm_queue_full(1))
    await actor.stop()

    fresh = VmActor(VM, lambda: _echo, claim_is_current=lambda vm, token: token == 5)
    fresh.start()
    with pytest.raises(Refused) as late:
        async with fresh.turn(4, "blue/10.1.0.1", 5, int(time.time() * 1000) - 1):
            pytest.fail("a turn past its deadline must not run")
    assert (late.value.status, late.value.message) == (Status.DEADLINE_EXCEEDED, limits.DEADLINE_WHILE_QUEUED)
    with pytest.raises(Refused) as stale:
        async with fresh.turn(5, "blue/10.1.0.1", 4, 0):
            pytest.fail("a turn of an ended claim must not run")
    assert (stale.value.status, stale.value.message) == (Status.FAILED_PRECONDITION, limits.CLAIM_ENDED)
    await fresh.stop()


async def test_a_caller_that_leaves_while_queued_never_takes_the_slot() -> None:
    release = asyncio.Event()

    async def handler(payload: bytes) -> bytes:
        await release.wait()
        return payload

    actor = VmActor(VM, lambda: handler)
    actor.start()
    answers: asyncio.Queue[Answer] = asyncio.Queue()
    actor.tell(envelope(answers, 1))
    entered: list[int] = []

    async def call() -> None:
        async with actor.turn(2, "blue/10.1.0.1", 5, 0):
            entered.append(2)

    task = asyncio.get_running_loop().create_task(call())
    await asyncio.sleep(0)
    task.cancel()
    release.set()
    actor.tell(envelope(answers, 3))
    await actor.idle()
    assert entered == [] and answers.qsize() == 2 and not actor.busy
    await actor.stop()


async def _never(payload: bytes) -> bytes:
    await asyncio.Event().wait()
    return b""


async def _echo(payload: bytes) -> bytes:
    return payload


def test_only_the_callers_own_metadata_travels_and_the_idempotent_mark_is_read() -> None:
    metadata = (("x-a", "1"), ("x-b-bin", b"\x00"), ("traceparent", "00-a-b-01"), ("user-agent", "grpc-go"),
                ("leasenet-idempotent", "1"), ("grpc-accept-encoding", "gzip"), (":authority", "localhost"))
    assert [(e.key, e.value) for e in forwarded(metadata)] == [("x-a", b"1"), ("x-b-bin", b"\x00"),
                                                               ("traceparent", b"00-a-b-01")]
    assert marked_idempotent(metadata) and not marked_idempotent((("leasenet-idempotent", "0"),))


@pytest.mark.parametrize(("requests", "responses", "kind"), [
    (1, 1, "unary"), (1, 0, "unary"), (3, 1, "client_stream"), (0, 1, "client_stream"), (1, 5, "server_stream"),
    (2, 2, "bidi")])
def test_a_calls_kind_comes_from_its_message_counts(requests: int, responses: int, kind: str) -> None:
    assert call_kind(requests, responses) == kind


def write(tmp_path: Path, vips: tuple[tuple[str, str], ...], extra: str = "") -> Path:
    path = tmp_path / "consumer.toml"
    path.write_text(consumer_toml([ConsumerVm("blue", "10.1.0.1", "tok", vips=vips)]) + extra)
    return path


def test_vip_endpoints_are_read_with_their_mode(tmp_path: Path) -> None:
    attachments, [vip, port] = load_config(write(tmp_path, (("10.1.255.1:7", "unix:///run/leasenet/vm1.sock"),
                                                            ("10.1.255.1:7", "127.0.0.1:17001"))))
    assert list(attachments) == ["blue/10.1.0.1"]
    assert (vip.vm, vip.target, vip.socket_path, vip.mode) == ("blue/10.1.0.1", "10.1.255.1:7",
                                                              "/run/leasenet/vm1.sock", 0o600)
    assert port.socket_path is None


@pytest.mark.parametrize(("vips", "words"), [
    ((("10.1.255.1", "unix:///tmp/a.sock"),), "not an address:port"),
    ((("echo:7", "unix:///tmp/a.sock"),), "not an address:port"),
    ((("10.1.255.1:7", "unix://relative.sock"),), "absolute path"),
    ((("10.1.255.1:7", "10.0.0.5:17001"),), "loopback"),
    ((("10.1.255.1:7", "unix:///tmp/a.sock"), ("10.1.255.2:7", "unix:///tmp/a.sock")), "listed twice"),
])
def test_a_bad_vip_endpoint_is_refused_at_start_in_one_line_naming_it(tmp_path: Path, vips: tuple[tuple[str, str], ...],
                                                                      words: str) -> None:
    with pytest.raises(ValueError) as refused:
        load_config(write(tmp_path, vips))
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert "vms[0]" in str(refused.value) or "listed twice" in str(refused.value)


def test_a_bad_socket_mode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "consumer.toml"
    path.write_text(consumer_toml([ConsumerVm("blue", "10.1.0.1", "tok", vips=(("10.1.255.1:7", "unix:///tmp/a.sock"),))])
                    + 'mode = "rw"\n')
    with pytest.raises(ValueError, match="octal file mode"):
        load_config(path)


async def test_the_replay_buffer_is_bounded_before_accepted_and_kept_after_it_only_for_an_idempotent_call() -> None:
    from consumer_host.vip import REPLAY_MESSAGES, _Call, _take_ready
    from wire.v1 import tunnel_pb2 as tpb

    call = _Call(idempotent=False, inbox=asyncio.Queue())  # unbounded here: as if the caller sent them all
    for i in range(REPLAY_MESSAGES + 5):
        call.inbox.put_nowait(b"m%d" % i)
    up = tpb.CallUp()
    _take_ready(call, up)
    assert len(up.messages) == REPLAY_MESSAGES and call.full()  # no more is taken before `accepted`
    assert call.replay == list(up.messages) and call.inbox.qsize() == 5
    call.accepted.set()
    _take_ready(call, up)
    assert call.overflowed and call.replay == []  # not idempotent: nothing kept once delivered
    assert not call.may_retry_after_start() and call.why_not_retried() == "it is not idempotent"

    kept = _Call(idempotent=True)
    kept.accepted.set()
    kept.keep(b"a")
    kept.keep(b"b")
    assert kept.replay == [b"a", b"b"] and kept.may_retry_after_start()
    kept.answered = True  # something went back to the caller: a retry would show it twice
    assert not kept.may_retry_after_start()
    assert kept.why_not_retried() == "part of its answer had already gone back to the caller"
    full = _Call(idempotent=True)
    full.accepted.set()
    for i in range(REPLAY_MESSAGES + 1):
        full.keep(b"m%d" % i)
    assert not full.may_retry_after_start() and "replay buffer" in full.why_not_retried()


async def test_a_unary_calls_request_and_end_go_with_its_start() -> None:
    from consumer_host.vip import _Call, _take_ready
    from wire.v1 import tunnel_pb2 as tpb

    call = _Call(idempotent=False)
    call.inbox.put_nowait(b"request")
    call.inbox.put_nowait(None)
    up = tpb.CallUp(start=tpb.CallStart(method="/p.S/M"))
    _take_ready(call, up)
    assert (list(up.messages), up.half_close, call.client_done) == ([b"request"], True, True)

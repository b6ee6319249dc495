"""The failover verdict (SPEC §6), and the request path following it: a request whose frame never
left the consumer host is retried on another VM, one that may have run is retried only if it is
idempotent, and what a consumer VM hears is said in leasenet's words, naming no producer host."""

from __future__ import annotations

import asyncio
import time


import pytest

from consumer_host.datapath import Admitted, PoolVm
from consumer_host.failover import Happened, Retry, out_of_attempts, verdict
from consumer_host.tunnel import TunnelClient
from mapping.model import VmId
from tests.unit.test_request_path import request, synced_path
from tests.unit.test_tunnel_frames import BIG, EndingCall
from tests.conftest import eventually_async
from wire.errors import DeadlineExceeded, LeasenetError, ProducerUnavailable, Status
from wire.v1 import tunnel_pb2 as tpb
from wire.verdict import Refusal

DYING, LIVING = "127.0.0.1:7101", "127.0.0.1:7102"


@pytest.mark.parametrize("idempotent", [False, True])
@pytest.mark.parametrize("happened", [Happened.NOT_DELIVERED, Happened.REFUSED])
def test_a_request_that_cannot_have_run_is_retried(happened: Happened, idempotent: bool) -> None:
    assert verdict(happened, idempotent, 7) == Retry(happened)


def test_a_request_that_may_have_run_is_retried_only_if_idempotent() -> None:
    assert verdict(Happened.DELIVERY_UNKNOWN, True, 7) == Retry(Happened.DELIVERY_UNKNOWN)
    fail = verdict(Happened.DELIVERY_UNKNOWN, False, 7)
    assert isinstance(fail, Refusal) and fail.error is ProducerUnavailable
    assert fail.message.startswith("delivery unknown") and "request 7" in fail.message
    assert "it is not idempotent, so it was not retried" in fail.message
    answered = verdict(Happened.DELIVERY_UNKNOWN, False, 7, why_not="part of its answer had already gone back")
    assert isinstance(answered, Refusal) and answered.message.endswith(
        "may have run; part of its answer had already gone back, so it was not retried")


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_request_without_an_answer_by_its_deadline_fails_even_if_idempotent(idempotent: bool) -> None:
    fail = verdict(Happened.NO_ANSWER, idempotent, 7)
    assert isinstance(fail, Refusal) and fail.error is DeadlineExceeded and "may have run" in fail.message


def test_a_request_out_of_attempts_fails_saying_what_happened_to_the_last() -> None:
    fail = out_of_attempts(Retry(Happened.REFUSED), 7, 3)
    assert fail == Refusal(ProducerUnavailable, "request 7 was not answered after 3 attempts "
                                       "(the last: refused by its producer host)")


class TwoHosts:
    """Pools of one VM on a producer host that dies and one on a host that lives: a request goes
    to the dying host until its tunnel broke."""

    def __init__(self, dying: TunnelClient) -> None:
        self.dying = dying
        self.put_back_to: list[str] = []

    async def acquire(self, admitted: Admitted, deadline: float) -> tuple[str, PoolVm]:
        host = DYING if self.dying.broken is None else LIVING
        return "pool", PoolVm(VmId(f"blue/{host}"), "10.1.1.5", host, 42)

    def put_back(self, pool: str, member: PoolVm, refused: bool = False) -> None:
        self.put_back_to.append(member.host_address)


class Answering:
    """The living host's tunnel: every frame is answered by its VM."""

    def __init__(self) -> None:
        self.request_ids: list[int] = []

    async def exchange(self, frame: tpb.Frame, timeout_s: float) -> tpb.Frame:
        self.request_ids.append(frame.inner.request_id)
        return tpb.Frame(id=frame.id, payload=b"answered", delivered=True)


class Tunnels:
    def __init__(self, dying: TunnelClient, living: Answering) -> None:
        self.clients = {DYING: dying, LIVING: living}

    def to(self, address: str) -> TunnelClient | Answering:
        return self.clients[address]


async def test_requests_on_a_chunk_refused_after_the_stream_ended_are_retried_on_another_vm() -> None:
    _, _, path, replica_task = await synced_path()
    dying, living, call = TunnelClient(DYING, on_broken=lambda address: None), Answering(), EndingCall(survives=1)
    pools = TwoHosts(dying)
    path.pools, path.tunnels = pools, Tunnels(dying, living)  # type: ignore[assignment]

    async def send(request_id: int) -> tuple[Status, str]:
        req = request(request_id=request_id)
        req.payload = b"x" * BIG  # a chunk each: the host dies after the first, the second write is refused
        try:
            resp = await path.forward(req, time.monotonic() + 10)
        except LeasenetError as exc:
            return exc.code, exc.message
        assert resp.payload == b"answered"
        return Status.OK, ""

    async def opened() -> EndingCall:
        return call

    try:
        sends = [asyncio.create_task(send(i)) for i in (1, 2, 3)]
        await eventually_async(lambda: len(dying._outbox) == 3, timeout_s=5, interval_s=0.001)  # none written yet: the stream opens now
        await dying.carry(opened)  # type: ignore[arg-type]
        outcomes = [await s for s in sends]
    finally:
        replica_task.cancel()

    (code, message), *rest = outcomes
    assert code == Status.UNAVAILABLE and message.startswith("delivery unknown"), message
    assert rest == [(Status.OK, ""), (Status.OK, "")]
    assert sorted(living.request_ids) == [2, 3]  # retried on the other host's VM, and only they
    assert pools.put_back_to.count(DYING) == 3
    for text in ("RPC already finished", "InvalidStateError", "Socket closed", DYING, "producer host 127"):
        assert text not in message

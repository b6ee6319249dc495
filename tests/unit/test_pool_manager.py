"""PoolManager, the pool book's driver, over a fake registry client: failures come back fast and
as sentences, and every task it starts is owned by run() (no process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from consumer_host.datapath import Admitted, Attachment
from consumer_host.tokens import PlainToken
from consumer_host.pools import PoolManager
from consumer_host.registry_client import RegistryClient
from tests.conftest import eventually_async
from mapping.model import LeasePolicy, Service
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from wire.errors import LeasenetError, Overloaded, Status, StoreUnavailable
from wire.v1 import registry_pb2 as pb

ECHO = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=1, max_pool=2))


def admitted(n: int) -> Admitted:
    return Admitted(Attachment("blue", f"10.1.0.{n}", PlainToken("secret")), ECHO, 100)


class FakeRegistry:
    """Answers RequestLease with whatever `answer` says; counts the calls."""

    def __init__(self) -> None:
        self.requests = 0
        self.answer: BaseException | None = None

    async def request_lease(self, service: str, network: str, address: str, host_id: str,
                            avoid_hosts: list[str]) -> pb.Lease:
        self.requests += 1
        if self.answer is not None:
            raise self.answer
        return pb.Lease(lease_id="a", service=service, consumer_network=network, consumer_vm=address, revision=5,
                        members=[pb.PoolMember(vm_id="blue/10.1.1.1", address="10.1.1.1",
                                               host_address="127.0.0.1:7101", fencing_token=5)])

    async def release_lease(self, lease_id: str) -> None:
        pass


@pytest.fixture
async def manager() -> AsyncIterator[tuple[PoolManager, FakeRegistry]]:
    registry = FakeRegistry()
    pools = PoolManager("c1", registry, Replica(MemoryStore()))  # type: ignore[arg-type]
    runner = asyncio.create_task(pools.run())
    yield pools, registry
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_a_new_lease_fails_fast_with_the_agents_sentence_while_they_answer_unavailable(manager) -> None:
    pools, registry = manager
    registry.answer = StoreUnavailable("leasing agent r1 is unavailable: etcd is unavailable (lease grant: refused)")
    far = time.monotonic() + 3600  # were it to wait for its deadline, the test would time out
    with pytest.raises(StoreUnavailable, match="etcd is unavailable") as first:
        await pools.acquire(admitted(1), far)
    assert "within the request's deadline" not in first.value.message

    with pytest.raises(StoreUnavailable, match="etcd is unavailable.*fail at once"):
        await pools.acquire(admitted(2), far)  # during the pause: not even asked
    assert registry.requests == 1


async def test_a_bug_in_an_effect_is_logged_and_answered_and_the_manager_goes_on(manager, caplog) -> None:
    pools, registry = manager
    registry.answer = KeyError("oops")
    with pytest.raises(LeasenetError, match="internal error") as failed:
        await pools.acquire(admitted(1), time.monotonic() + 3600)
    assert failed.value.code == Status.INTERNAL
    assert "RequestLease failed" in caplog.text

    registry.answer = None
    pool, member = await pools.acquire(admitted(1), time.monotonic() + 3600)
    assert member.fencing_token == 5 and pool.busy == {member.vm}


async def test_a_new_lease_asks_each_leasing_agent_once() -> None:
    registry = RegistryClient(["127.0.0.1:1", "127.0.0.1:2"])  # nothing listens there
    try:
        with pytest.raises(StoreUnavailable, match="leasing agent 127.0.0.1:. is unavailable"):
            await registry.request_lease("echo", "blue", "10.1.0.1", "c1", [])
        assert registry.calls == 2
    finally:
        await registry.close()


async def test_requests_waiting_on_one_pool_are_bounded_and_the_next_is_refused_at_once() -> None:
    registry = FakeRegistry()
    pools = PoolManager("c1", registry, Replica(MemoryStore()), max_waiters=2)  # type: ignore[arg-type]
    one_vm = Admitted(admitted(1).attachment, Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(max_pool=1)), 100)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(pools.run())
        pool, member = await pools.acquire(one_vm, time.monotonic() + 3600)
        waiters = [tasks.create_task(pools.acquire(one_vm, time.monotonic() + 3600)) for _ in range(2)]
        await eventually_async(lambda: pools._waiting.get((one_vm.attachment.vm_id, "echo")) == 2)
        with pytest.raises(Overloaded, match="2 requests of consumer VM 10.1.0.1 already wait .* the limit"):
            await pools.acquire(one_vm, time.monotonic() + 3600)
        pools.put_back(pool, member)
        done, _ = await asyncio.wait(waiters, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert [task.result()[1] for task in done] == [member]  # a waiter got the VM; the refused one never queued
        for waiter in waiters:
            waiter.cancel()
        runner.cancel()

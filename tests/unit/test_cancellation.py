"""Cancellation, httpcore-style: slow fakes (a leasing agent that never answers, a tunnel whose
exchange never returns), a request cancelled in the middle, then the pool must hold no busy VM
and no task of ours may be left. And shutdown: steps that run to their end when cut short, two-stage
signals, and hosts whose `serve()` cleans up whether it stopped or broke halfway."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable

import pytest

from consumer_host.datapath import Attachment
from consumer_host.tokens import PlainToken
from consumer_host.pools import PoolManager
from consumer_host.service import ConsumerConfig, RequestPath
from consumer_host.service import serve as serve_consumer
from mapping import keys
from mapping.model import HostId, LeasePolicy, Network, ProducerVm, Service, VmId
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from producer_host.service import ProducerConfig
from producer_host.service import serve as serve_producer
from wire.lifecycle import Step, run_until_signalled, shut_down
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import registry_pb2 as rpb

ECHO = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=1, max_pool=1))
VM = Attachment("blue", "10.1.0.1", PlainToken("secret"))
FOREVER = 3600.0


class SilentAgent:
    """A leasing agent that never answers a lease request (a hung registry)."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def request_lease(self, *args: object) -> rpb.Lease:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class GrantingAgent:
    """A leasing agent that grants a pool of one VM at once."""

    async def request_lease(self, *args: object) -> rpb.Lease:
        return rpb.Lease(lease_id="a1", service="echo", revision=7, members=[rpb.PoolMember(
            vm_id="blue/10.1.1.1", address="10.1.1.1", host_address="127.0.0.1:7100", fencing_token=7)])


class StuckTunnel:
    """A tunnel whose exchange never returns (a producer host that went silent)."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()

    def to(self, address: str) -> StuckTunnel:
        return self

    async def exchange(self, frame: object, timeout_s: float) -> object:
        self.sent.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def request() -> cpb.SendRequest:
    return cpb.SendRequest(network="blue", src=VM.address, token="secret", target=ECHO.target, payload=b"hi")


async def tasks_left(before: set[asyncio.Task[object]], within_s: float = 2.0) -> set[asyncio.Task[object]]:
    """The tasks started since `before` that have not ended within `within_s` (cancelled ones need
    a few loop turns to finish)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while (left := {t for t in asyncio.all_tasks() - before if not t.done()}) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return left


async def cancel_mid_request(agent: object, tunnel: StuckTunnel,
                             reached: Callable[[], Awaitable[object]]) -> tuple[PoolManager, set[asyncio.Task[object]]]:
    """Start one request, cancel it once `reached` returns, stop everything we started; returns the
    pool manager and the tasks there were before."""
    before = asyncio.all_tasks()
    store = MemoryStore()
    for record in (Network("blue", 100), ECHO):
        await store.put(keys.key_of(record), keys.encode(record))
    replica = Replica(store)
    config = ConsumerConfig(HostId("c1"), "127.0.0.1:0", "127.0.0.1:7200", [], {VM.vm_id: VM})
    pools = PoolManager(config.host_id, agent, replica)  # type: ignore[arg-type]
    path = RequestPath(config, replica, pools, tunnel)  # type: ignore[arg-type]
    async with asyncio.TaskGroup() as tasks:
        # as serve() runs them: the replica and the pool manager's driver, which owns its effects
        background = [tasks.create_task(replica.run()), tasks.create_task(pools.run())]
        await replica.synced.wait()
        sent = tasks.create_task(path.forward(request(), asyncio.get_running_loop().time() + FOREVER))
        await reached()
        sent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sent
        for task in background:
            task.cancel()
    return pools, before


async def test_a_request_cancelled_mid_exchange_leaves_no_vm_busy_and_no_task_behind() -> None:
    tunnel = StuckTunnel()
    pools, before = await cancel_mid_request(GrantingAgent(), tunnel, tunnel.sent.wait)
    [pool] = pools.pools.values()
    assert list(pool.members) == [VmId("blue/10.1.1.1")] and pool.busy == set()
    assert await tasks_left(before) == set()


async def test_a_request_cancelled_while_its_lease_is_requested_leaves_no_vm_busy() -> None:
    agent = SilentAgent()
    pools, before = await cancel_mid_request(agent, StuckTunnel(), agent.asked.wait)
    assert pools.pools == {}  # no pool, so no VM marked busy
    assert await tasks_left(before) == set()


async def test_a_lease_request_that_outlived_its_request_ends_when_the_pool_manager_stops() -> None:
    agent = SilentAgent()
    _, before = await cancel_mid_request(agent, StuckTunnel(), agent.asked.wait)
    left = await tasks_left(before, within_s=0.5)
    for task in left:
        task.cancel()
    assert left == set()


async def test_a_cut_short_shutdown_finishes_the_step_under_way_and_skips_the_rest() -> None:
    before = asyncio.all_tasks()
    done: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def give_leases_back() -> None:
        started.set()
        await release.wait()
        done.append("leases")

    async def deregister() -> None:
        done.append("deregister")

    shutdown = asyncio.create_task(shut_down([Step("give leases back", give_leases_back),
                                              Step("deregister", deregister)]))
    await started.wait()
    shutdown.cancel()  # a second signal
    with pytest.raises(asyncio.CancelledError):
        await shutdown
    release.set()
    assert await tasks_left(before) == set()
    assert done == ["leases"]  # shielded: not cut in half; the step after it was skipped


async def test_a_failing_or_hanging_step_does_not_keep_the_next_from_running() -> None:
    done: list[str] = []

    async def fails() -> None:
        raise OSError("etcd went away")

    async def last() -> None:
        done.append("last")

    await shut_down([Step("fail", fails), None, Step("hang", asyncio.Event().wait, limit_s=0.05), Step("last", last)])
    assert done == ["last"]


async def test_the_first_signal_asks_for_a_drain_and_the_second_stops_at_once() -> None:
    drained, stopped_at_once = asyncio.Event(), asyncio.Event()

    async def main(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        drained.set()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()  # a drain that would never end
        except asyncio.CancelledError:
            stopped_at_once.set()
            raise

    await run_until_signalled(main)  # returns: a stop asked for twice is not a failure
    assert drained.is_set() and stopped_at_once.is_set()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def producer_config() -> ProducerConfig:
    return ProducerConfig(HostId("p1"), "127.0.0.1:0", "", "blue", "echo", vms=2, vm_address_start="10.1.1.1")


async def test_a_stopped_producer_host_deregisters_and_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    store, stop = MemoryStore(), asyncio.Event()
    await serve_producer(producer_config(), store, stop=stop, ready=lambda _: stop.set())
    assert (await store.snapshot(keys.ROOT)).items == []  # the host and its VMs are gone at once
    assert await tasks_left(before) == set()


async def test_a_producer_host_whose_start_up_breaks_halfway_cleans_up_and_says_why() -> None:
    before = asyncio.all_tasks()
    store = MemoryStore()
    # one of p1's own VM keys, held past the TTL: another live process with p1's id
    taken = ProducerVm("blue", "10.1.1.2", HostId("p1"), "echo", "echo")
    await store.put(keys.key_of(taken), keys.encode(taken))
    with pytest.raises(BaseExceptionGroup) as failed:
        await serve_producer(dataclasses.replace(producer_config(), liveness_ttl_s=1), store, stop=asyncio.Event())
    assert "host id 'p1' is already in use by a live process" in str(failed.value.exceptions[0])
    assert [kv.key for kv in (await store.snapshot(keys.ROOT)).items] == [keys.key_of(taken)]
    assert await tasks_left(before) == set()


class BrokenRenewals(MemoryStore):
    """A store whose lease renewals fail with a bug, not with StoreUnavailable."""

    async def refresh_lease(self, lease_id: int) -> int:
        raise RuntimeError("a bug in the keep-alive")


async def test_a_consumer_host_whose_task_fails_still_deregisters_and_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    store = BrokenRenewals()
    registered = asyncio.Event()
    config = ConsumerConfig(HostId("c1"), "127.0.0.1:0", "", ["127.0.0.1:1"], {VM.vm_id: VM}, liveness_ttl_s=1)
    with pytest.raises(BaseExceptionGroup) as failed:
        await serve_consumer(config, store, stop=asyncio.Event(), ready=lambda _: registered.set())
    assert registered.is_set() and "a bug in the keep-alive" in str(failed.value.exceptions[0])
    assert (await store.snapshot(keys.HOSTS)).items == []  # deregistered in `finally`, not left to the TTL
    assert await tasks_left(before) == set()

"""The supervisor's I/O around the pure life cycle, with a fake driver, a real grpc.health server on
a unix socket and the in-memory store: registered once healthy, the used mark, a reset only after a
used claim, withdrawn and registered anew after an exit or failed checks, withdrawn at stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mapping import keys
from mapping.liveness import Liveness
from mapping.model import Host, HostId, HostKind, ProducerVm
from mapping.store.memory import MemoryStore
from producer_host.actors import VmActor
from producer_host.vms.fleet import own_server_handler
from producer_host.vms.lifecycle import VmState
from producer_host.vms.settings import VmSettings
from producer_host.vms.supervisor import VmSupervisor
from tests.conftest import eventually_async

VM = ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo", "command")
HOST = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")
SETTINGS = VmSettings(command="vm {socket}", health_interval_s=0.05, ready_timeout_s=5.0, stop_grace_s=1.0)


class FakeDriver:
    """A VM process without a process: its health is the test's server, its exit the test's call."""

    restartable = True

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.starts = self.stops = 0
        self.pid: int | None = None
        self._exit: asyncio.Future[int] | None = None

    async def start(self) -> str:
        self.starts += 1
        self.pid = 1000 + self.starts
        self._exit = asyncio.get_running_loop().create_future()
        return self.endpoint

    async def exited(self) -> int:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def stop(self) -> None:
        self.stops += 1
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(-15)

    def crash(self) -> None:
        assert self._exit is not None
        self._exit.set_result(-9)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[VmSupervisor, FakeDriver, MemoryStore, health.aio.HealthServicer]]:
    server = grpc.aio.server()
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    socket = tmp_path / "vm.sock"
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    store = MemoryStore()
    liveness = Liveness(store, HOST.host_id, lambda: [HOST], 5)
    await liveness.register()
    driver = FakeDriver(f"unix://{socket}")
    supervisor = VmSupervisor(VM, driver, VmActor(VM, own_server_handler), liveness, SETTINGS)
    task = asyncio.get_running_loop().create_task(supervisor.run())
    try:
        yield supervisor, driver, store, checker
    finally:
        await supervisor.stop()
        await task
        await server.stop(0)
        await store.close()


async def record(store: MemoryStore) -> tuple[int, bool] | None:
    held = await store.get(keys.key_of(VM))
    return None if held is None else (held.create_revision, b'"used":true' in held.value)


async def test_registered_once_healthy_and_reset_only_after_the_claim_that_used_it(running) -> None:
    supervisor, driver, store, _ = running
    first = await eventually_async(lambda: record(store), 5, what="registered once healthy")
    assert supervisor.actor.endpoint == driver.endpoint and first[1] is False
    supervisor.claim_ended(7)  # a claim that never ran a call ends: the VM stays warm
    await supervisor.first_use(8)
    assert await record(store) == (first[0], True)  # marked, same incarnation
    supervisor.claim_ended(7)
    assert driver.starts == 1 and supervisor.state is VmState.SERVING
    supervisor.claim_ended(8)  # the claim that used it ends: reset

    async def reset() -> tuple[int, bool] | None:
        now = await record(store)
        return now if now is not None and now[0] != first[0] else None
    again = await eventually_async(reset, 5, what="registered again after the reset")
    assert again[1] is False and driver.starts == 2 and driver.stops >= 1


async def test_an_exit_or_failed_checks_withdraw_it_and_it_comes_back_as_a_new_incarnation(running) -> None:
    supervisor, driver, store, checker = running
    first = await eventually_async(lambda: record(store), 5)
    driver.crash()
    await eventually_async(lambda: driver.starts == 2, 5, what="started again after its exit")
    second = await eventually_async(lambda: record(store), 5)
    assert second[0] > first[0]
    await checker.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await eventually_async(lambda: supervisor.state is not VmState.SERVING, 5, what="unhealthy")
    assert supervisor.actor.endpoint is None
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    third = await eventually_async(lambda: record(store), 10, what="healthy again")
    assert third[0] > second[0]


async def test_stop_withdraws_the_record_and_stops_the_vm(running) -> None:
    supervisor, driver, store, _ = running
    await eventually_async(lambda: record(store), 5)
    await supervisor.stop()
    assert supervisor.state is VmState.STOPPED and await record(store) is None and driver.stops >= 1

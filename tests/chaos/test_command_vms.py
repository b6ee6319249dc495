"""SPEC §4 and §6 with real workloads: producer VMs that are processes (the notebook gRPC server,
examples/notebook), consumer VMs calling them through VIP endpoints with the notebook's generated
client, and faults on the VMs themselves as well as on a producer host. Exclusivity is checked from
the VMs' own records of the calls they ran (their --history), not only from the hosts'.

Asserted: every call got exactly one outcome; no producer VM ran two calls at once or a call under
a claim never granted on it; no VM was in two pools at once; no Get found another lessee's value;
the only errors are the ones SPEC §6 allows (UNAVAILABLE for a call that may have run when its VM
died, a deadline for one held by a stopped VM); every consumer VM got answers again after each fault."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from examples.notebook import workload
from leasenet import checker
from leasenet.checker import ClaimLog, Recording
from leasenet.cluster import ConsumerVm, LocalCluster, consumer_toml, write_toml
from leasenet.demo import VM_COMMAND, incarnation, next_incarnation, watch_leases
from mapping.config import ClusterConfig, to_toml
from mapping.model import LeasePolicy, Network, Service, parse_target
from tests.chaos.conftest import TABLES

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(240)]

TARGET = "10.1.255.1:7"
CONSUMERS = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
CLUSTER = ClusterConfig(networks=[Network("blue", 100)], services=[Service(
    "notebook", "blue", *parse_target(TARGET), LeasePolicy(min_pool=1, max_pool=1, lease_ttl_s=5, idle_release_s=30))])
STOP_HOLD_S = 3.0  # a SIGSTOPped VM fails its health checks within this (--vm-health-interval 0.5)


async def faults(cluster: LocalCluster, vms: list[workload.ConsumerVm], registry: str, per_vm: float,
                 traffic: asyncio.Task[bool]) -> list[checker.Fault]:
    """SIGKILL a VM process, SIGSTOP another past its health checks, SIGKILL a third, then SIGKILL a
    producer host and start it again: each once the VM it hits has made a share of its calls."""
    done: list[checker.Fault] = []

    async def at(share: float, *which: workload.ConsumerVm) -> None:
        """Until each of `which` (every VM: none named) has made `share` of its calls."""
        while min(vm.calls for vm in which or vms) < share * per_vm and not traffic.done():
            await asyncio.sleep(0.05)

    async def vm_fault(share: float, i: int, sig: signal.Signals, hold_s: float = 0.0) -> None:
        await at(share, vms[i])
        vm_id, pid = vms[i].served_by, vms[i].pid
        old = await incarnation(registry, cluster.operator_tls, vm_id)
        at_ns = time.monotonic_ns()
        os.kill(pid, sig)
        if hold_s:
            await asyncio.sleep(hold_s)  # the fault itself lasts this long (not a synchronisation)
            os.kill(pid, signal.SIGCONT)  # too late: its host has withdrawn and stopped it by now
        assert await next_incarnation(registry, cluster.operator_tls, vm_id, old) is not None, \
            f"{vm_id} was not registered again as a new incarnation after {sig.name}"
        done.append(checker.Fault("vm", sig.name.lower(), vm_id, at_ns, time.monotonic_ns(), "fault", (vms[i].name,)))

    await vm_fault(0.15, 0, signal.SIGKILL)
    await vm_fault(0.3, 1, signal.SIGSTOP, STOP_HOLD_S)
    await vm_fault(0.45, 2, signal.SIGKILL)
    await at(0.6)
    at_ns = time.monotonic_ns()
    cluster.signal("producer1", signal.SIGKILL)
    await asyncio.to_thread(cluster.restart, "producer1")  # waits for its old liveness lease to lapse first
    done.append(checker.Fault("producer", "sigkill", "producer1", at_ns, time.monotonic_ns(), "fault"))
    return done


def test_command_vms_under_faults_keep_every_promise(cluster: LocalCluster) -> None:
    work = cluster.workdir
    config = write_toml(work / "cluster.toml", to_toml(CLUSTER))
    registries = [cluster.registry(f"registry{i}", config).address for i in (1, 2)]
    vm_history = work / "vms.history.jsonl"
    for i in (1, 2):
        cluster.producer(f"producer{i}", network="blue", service="notebook", vms=4, vm_address_start=f"10.1.{i}.1",
                         handler=None, extra=("--vm-command", f"{VM_COMMAND} --history {vm_history}",
                                              "--vm-health-interval", "0.5"))
    sockets = {a: f"unix://{work}/vip-{a}.sock" for a in CONSUMERS}
    consumer = cluster.consumer("consumer1", registries=registries, config=write_toml(work / "consumer1.toml", consumer_toml(
        ConsumerVm("blue", a, f"token-{a}", vips=((TARGET, sockets[a]),)) for a in CONSUMERS)))
    assert consumer.alive

    async def scenario() -> tuple[workload.Recorder, ClaimLog, list[checker.Fault]]:
        claims, synced = ClaimLog(), asyncio.Event()
        watcher = asyncio.create_task(watch_leases(registries[0], claims, synced, cluster.operator_tls))
        async with asyncio.timeout(10):
            await synced.wait()
        recorder = workload.Recorder(open(work / "calls.jsonl", "a", encoding="utf-8"))
        vms = workload.consumer_vms([(f"blue/{a}", sockets[a]) for a in CONSUMERS], recorder)
        rounds = 50
        traffic = asyncio.create_task(workload.run(vms, rounds, pause_s=0.02, ready_timeout_s=60))
        done = await faults(cluster, vms, registries[0], rounds * workload.CALLS_PER_ROUND, traffic)
        assert await traffic, "a consumer VM never got an answer"
        watcher.cancel()
        recorder.stream.close()  # type: ignore[union-attr]
        return recorder, claims, done

    recorder, claims, done = asyncio.run(scenario())
    requests = checker.requests_from_call_lines(recorder.lines)
    vm_calls = checker.executions_from_vm_lines(checker.read_lines([vm_history]))
    report = checker.check(Recording(requests, [], checker.claims_from_lines(claims.lines), [], done,
                                     vm_calls=vm_calls))
    table = checker.render("command VMs: VM SIGKILL, VM SIGSTOP, producer host SIGKILL", report)
    TABLES.append(table)
    assert report.lost == 0 and report.violations == [], f"{table}\n(histories and logs in {work})"
    assert recorder.states["wrong"] == 0 and recorder.states["kept"] > 0, recorder.states
    assert len(vm_calls) >= report.ok  # the VMs recorded every call they answered, and retried ones twice
    allowed = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert set(report.errors_by_code) <= allowed, f"{table}\n{Counter(r.outcome.message for r in requests if r.outcome and r.outcome.status != 'OK')}"
    assert all(r.seconds and not r.unrecovered for r in report.recoveries), table
    assert [r.fault.name for r in report.recoveries] == ["vm sigkill", "vm sigstop", "vm sigkill",
                                                          "producer sigkill"]

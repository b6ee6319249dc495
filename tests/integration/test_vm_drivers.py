"""Command and endpoint VMs with real processes and a real etcd: a VM is registered only once
healthy, withdrawn when it dies and registered again as a new incarnation (whose old claims' frames
are refused), reset between lessees (--vm-reset restart) or kept (none), limited, and logged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from leasenet.cluster import LocalCluster, consumer_toml, write_toml
from mapping import keys
from mapping.model import vm_id
from mapping.store.etcd import EtcdStore
from tests.conftest import eventually_async
from tests.integration.helpers import attached, cluster_toml, leases, send_status
from tests.integration.test_tunnel_validation import exchange
from wire import metrics
from wire.v1 import tunnel_pb2 as tpb

pytestmark = pytest.mark.integration

LIFEVM = Path(__file__).resolve().parent.parent / "vms" / "lifevm.py"
VM = vm_id("blue", "10.1.1.1")
VM_KEY = keys.vm_key("p1", VM)


def lifevm(report: Path, *flags: str, listen: str = "unix://{socket}") -> str:
    return (f"{{python}} {LIFEVM} --listen {listen} --vm-id {{vm_id}} --workdir {{workdir}} --report {report} "
            + " ".join(flags))


def starts(report: Path, vm: str = VM) -> list[dict[str, object]]:
    """Every start of the VM's program so far, as it reported it (one line per incarnation)."""
    path = report / (vm.replace("/", "_") + ".jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def command_host(cluster: LocalCluster, report: Path, *flags: str, extra: tuple[str, ...] = (), vms: int = 1,
                 listen: str = "unix://{socket}"):
    report.mkdir(exist_ok=True)
    return cluster.producer("p1", network="blue", service="echo", vms=vms, vm_address_start="10.1.1.1", handler=None,
                            extra=("--vm-command", lifevm(report, *flags, listen=listen), "--vm-stop-grace", "2",
                                   "--vm-health-interval", "0.2", *extra))


def with_consumer(cluster: LocalCluster, *, idle: float = 30.0):
    registry = cluster.registry("registry1", write_toml(cluster.workdir / "cluster.toml",
                                                        cluster_toml(min_pool=1, max_pool=1, idle=idle)))
    consumer = cluster.consumer("c1", config=write_toml(cluster.workdir / "c1.toml",
                                                        consumer_toml(attached(["10.1.0.1", "10.1.0.2"]))),
                                registries=[registry.address])
    return registry, consumer


async def registered(store: EtcdStore) -> dict[str, object] | None:
    held = await store.get(VM_KEY)
    return None if held is None else {**json.loads(held.value), "revision": held.create_revision}


def new_incarnation(store: EtcdStore, first: dict[str, object]):
    """A check for eventually_async: the VM's record is back with another create revision."""
    async def check() -> dict[str, object] | None:
        now = await registered(store)
        return now if now is not None and now["revision"] != first["revision"] else None
    return check


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


async def test_a_vm_that_never_becomes_healthy_is_never_registered(cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "report"
    command_host(cluster, report, "--never-healthy", extra=("--vm-ready-timeout", "0.5"))
    await eventually_async(lambda: len(starts(report)) >= 3, 60, what="restarted after each ready timeout")
    assert len({start["pid"] for start in starts(report)}) == len(starts(report))
    store = await cluster.open_store()
    try:
        sentinel = keys.ROOT + "test/sentinel"
        now = await store.put(sentinel, b"")  # the last event to read
        seen: list[str] = []
        async for batch in store.watch(keys.ROOT, 1):  # every event since the keyspace began
            seen += [event.key for event in batch.events]
            if any(event.key == sentinel for event in batch.events) or batch.revision >= now:
                break
        assert keys.PRODUCER_HOSTS + "p1" in seen  # the host registered
        assert [key for key in seen if key.startswith(keys.VMS)] == [] and await store.get(VM_KEY) is None
    finally:
        await store.close()


async def test_a_killed_vm_is_withdrawn_and_comes_back_as_a_new_incarnation_refusing_its_old_claim(
        cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "report"
    _, consumer = with_consumer(cluster)
    cluster.metrics = True
    producer = command_host(cluster, report)
    store = await cluster.open_store()
    try:
        first = await eventually_async(lambda: registered(store), 60, what="the VM registered once healthy")
        # a Send to a VM that runs its own server is refused with a sentence, but the lease is made
        code, details = await send_status(consumer.address, "10.1.0.1")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "runs its own gRPC server" in details, details
        [lease] = await leases(cluster.procs["registry1"].address)
        [member] = lease.members
        pid = starts(report)[-1]["pid"]
        os.kill(int(pid), signal.SIGKILL)  # type: ignore[arg-type]
        again = await eventually_async(new_incarnation(store, first), 60, what="registered again, a new incarnation")
        assert not again.get("used") and len(starts(report)) == 2 and starts(report)[1]["pid"] != pid
        stale = tpb.Frame(id=1, outer=tpb.OuterHeader(vni=100, src_host=consumer.address, dst_host=producer.address,
                                                      fencing_token=member.fencing_token),
                          inner=tpb.InnerHeader(network="blue", src="10.1.0.1", dst=member.address, dst_port=7,
                                                request_id=1), payload=b"old claim")
        answer = (await exchange(producer.address, [stale]))[1]
        assert answer.status_code == grpc.StatusCode.FAILED_PRECONDITION.value[0], answer
        assert "not the current claim" in answer.status_message
        log = producer.log.read_text()
        assert f"VM {VM}: serving --exited--> backing_off" in log and "withdrawn" in log
        scraped = metrics.scrape(producer.metrics)
        assert metrics.total(scraped, "leasenet_vm_restarts_total", service="echo", reason="exit") == 1
        assert metrics.total(scraped, "leasenet_vm_restart_to_ready_seconds_count", service="echo") == 1
        assert metrics.total(scraped, "leasenet_vms", service="echo", state="serving") == 1
    finally:
        await store.close()


async def test_a_used_vm_is_reset_after_its_claim_ends_with_a_new_process_and_an_empty_work_dir(
        cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "report"
    registry, consumer = with_consumer(cluster, idle=1.0)
    command_host(cluster, report)
    store = await cluster.open_store()
    try:
        first = await eventually_async(lambda: registered(store), 60, what="the VM registered once healthy")
        await send_status(consumer.address, "10.1.0.1")  # the lessee's first call marks the VM used
        marked = await eventually_async(lambda: _used(store), 10, what="the VM marked used")
        assert marked["revision"] == first["revision"]  # the same incarnation: the claim stays valid
        await eventually_async(lambda: len(starts(report)) == 2, 60, what="the VM restarted after the idle release")
        before, after = starts(report)
        assert after["pid"] != before["pid"] and after["files_at_start"] == [] and before["files_at_start"] == []
        assert after["workdir"] != before["workdir"] and not Path(str(before["workdir"])).exists()
        assert Path(str(after["workdir"]), "state.txt").exists()
        again = await eventually_async(new_incarnation(store, first), 60, what="registered again, unused")
        assert "used" not in again
        code, _ = await send_status(consumer.address, "10.1.0.2")  # the next lessee gets the fresh incarnation
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        [lease] = await leases(registry.address)
        assert lease.members[0].fencing_token > int(again["revision"])  # type: ignore[arg-type]
    finally:
        await store.close()


async def test_with_reset_none_the_next_lessee_gets_the_same_process(cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "report"
    registry, consumer = with_consumer(cluster, idle=1.0)
    command_host(cluster, report, extra=("--vm-reset", "none"))
    store = await cluster.open_store()
    try:
        first = await eventually_async(lambda: registered(store), 60, what="the VM registered once healthy")
        await send_status(consumer.address, "10.1.0.1")
        await eventually_async(lambda: leases(registry.address), 10, what="a lease")
        await eventually_async(lambda: _no_leases(registry.address), 30, what="the idle lease released")
        await send_status(consumer.address, "10.1.0.2")
        [lease] = await leases(registry.address)
        assert lease.consumer_vm.endswith("10.1.0.2") and lease.members[0].address == "10.1.1.1"
        now = await registered(store)
        assert now == first and len(starts(report)) == 1  # same record, same process, never marked used
    finally:
        await store.close()


async def _used(store: EtcdStore) -> dict[str, object] | None:
    now = await registered(store)
    return now if now is not None and now.get("used") else None


async def _no_leases(registry: str) -> bool:
    return not await leases(registry)


async def test_a_vm_process_is_limited_logged_in_its_own_group_and_stopped_with_its_host(
        cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "report"
    producer = command_host(cluster, report, extra=("--vm-memory-mb", "2048", "--vm-nice", "3"),
                            vms=2, listen="127.0.0.1:{port}")
    await eventually_async(lambda: len(starts(report)) == 1 and len(starts(report, vm_id("blue", "10.1.1.2"))) == 1,
                           60)
    [start] = starts(report)
    pid = int(start["pid"])  # type: ignore[arg-type]
    limits = Path(f"/proc/{pid}/limits").read_text()
    [address_space] = [line for line in limits.splitlines() if line.startswith("Max address space")]
    assert address_space.split()[3:5] == [str(2048 * 1024 * 1024)] * 2, address_space
    assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16]) == 3  # nice
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session and process group
    assert start["cwd"] == start["workdir"] and str(start["listen"]).startswith("127.0.0.1:")
    await eventually_async(lambda: f"VM {VM} stdout: lifevm {VM} says hello on stdout" in producer.log.read_text()
                           and f"VM {VM} stderr: lifevm {VM} says hello on stderr" in producer.log.read_text(), 30)
    assert "no writable cgroup v2 here" in producer.log.read_text() or "cgroup v2" in producer.log.read_text()
    cluster.stop("p1")  # SIGTERM: the host drains and stops its VM processes
    assert not alive(pid)
    assert "stop the VMs took longer" not in producer.log.read_text()


async def test_a_vm_process_dies_with_its_host_even_a_killed_one(cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "report"
    command_host(cluster, report)
    await eventually_async(lambda: len(starts(report)) == 1, 60)
    pid = int(starts(report)[0]["pid"])  # type: ignore[arg-type]
    assert alive(pid)
    cluster.signal("p1", signal.SIGKILL)  # no drain: the parent-death signal is all that is left
    await eventually_async(lambda: not alive(pid), 10, what="the VM process gone with its host")


async def test_an_endpoint_vm_is_registered_while_healthy_and_comes_back_as_a_new_incarnation(
        cluster: LocalCluster, tmp_path: Path) -> None:
    report, workdir = tmp_path / "report", tmp_path / "vmwork"
    report.mkdir()
    workdir.mkdir()
    socket = tmp_path / "vm.sock"

    def run_vm() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(LIFEVM), "--listen", f"unix://{socket}", "--vm-id", VM,
                                 "--workdir", str(workdir), "--report", str(report)])
    vm = run_vm()
    try:
        cluster.producer("p1", network="blue", service="echo", vms=None, vm_address_start="10.1.1.1", handler=None,
                         extra=("--vm-endpoint", f"unix://{socket}", "--vm-health-interval", "0.2"))
        store = await cluster.open_store()
        try:
            first = await eventually_async(lambda: registered(store), 60, what="the endpoint VM registered")
            assert first["handler"] == "endpoint"
            vm.kill()
            vm.wait()
            await eventually_async(lambda: _gone(store), 30, what="withdrawn while it does not answer")
            socket.unlink(missing_ok=True)
            vm = run_vm()
            await eventually_async(new_incarnation(store, first), 60, what="registered again, a new incarnation")
        finally:
            await store.close()
    finally:
        vm.kill()
        vm.wait()


async def _gone(store: EtcdStore) -> bool:
    return await registered(store) is None


def test_a_non_loopback_endpoint_is_refused_in_one_line(cluster: LocalCluster) -> None:
    args = ["producer-host", "--host-id", "p1", "--network", "blue", "--service", "echo", "--vm-address-start",
            "10.1.1.1", "--vm-endpoint", "192.0.2.7:50051"]
    spawned = cluster.spawn("p1", *args, wait=False)  # no ready file ever comes
    assert spawned.process is not None and spawned.process.wait(60) != 0
    lines = [line for line in spawned.log.read_text().splitlines() if line.strip()]
    assert lines == ["leasenet: --vm-endpoint '192.0.2.7:50051' is not loopback or a unix socket: a VM must be "
                     "reachable only from its producer host"], lines


"""SPEC §3 end to end on a real etcd with every host a separate process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import grpc
import pytest

from leasenet import checker
from tests.conftest import eventually, eventually_async
from tests.integration.helpers import dial, history, leases, send, send_status, start
from wire.tls import Kind
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

pytestmark = pytest.mark.integration


async def test_answer_comes_from_the_target_virtual_address_not_the_producer_vm(cluster):
    topo = start(cluster, vms=2)
    resp = await send(topo.consumers[0].address, "10.1.0.1", b"hello", request_id=7)

    assert resp.payload == b"hello"
    assert (resp.src, resp.src_port) == ("10.1.255.1", 7)
    assert resp.dst == "10.1.0.1" and resp.request_id == 7
    [lease] = await leases(topo.registry.address)
    [member] = lease.members
    assert member.address.startswith("10.1.1.") and resp.src != member.address
    # the producer VM really ran it
    runs = checker.load(executions=history(cluster)).executions
    assert [(r.vm, r.request_id, r.consumer) for r in runs] == [(member.vm_id, 7, "blue/10.1.0.1")]


async def test_first_request_leases_a_pool_visible_to_the_cli_and_the_watch_stream(cluster):
    topo = start(cluster)
    async with dial(topo.registry.address, Kind.REGISTRY) as channel:
        stream = rpb_grpc.InspectionStub(channel).WatchLeases(rpb.WatchLeasesRequest())
        first = await stream.read()
        assert first.type == rpb.LeaseEvent.SYNCED  # no lease before the first request

        await send(topo.consumers[0].address, "10.1.0.1")
        event = await asyncio.wait_for(stream.read(), 5)
        assert event.type == rpb.LeaseEvent.GRANTED
        assert (event.lease.consumer_vm, event.lease.service, len(event.lease.members)) == ("10.1.0.1", "echo", 1)
        stream.cancel()

    out = subprocess.run([sys.executable, "-m", "leasenet", "leases", "--registry", topo.registry.address, "--json",
                          *cluster.tls_args()], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    [lease] = json.loads(out.stdout)["leases"]
    assert lease["lease_id"] == event.lease.lease_id and lease["consumer_vm"] == "10.1.0.1"


async def test_racing_consumer_hosts_never_share_a_producer_vm_and_losers_hear_why(cluster):
    # 3 producer VMs, 6 consumer VMs on 3 consumer hosts, all asking at once
    topo = start(cluster, vms=3, max_pool=1,
                 consumers=[["10.1.0.1", "10.1.0.2"], ["10.1.0.3", "10.1.0.4"], ["10.1.0.5", "10.1.0.6"]])
    calls = [send_status(c.address, f"10.1.0.{i}") for i, c in
             zip(range(1, 7), [topo.consumers[0]] * 2 + [topo.consumers[1]] * 2 + [topo.consumers[2]] * 2)]
    results = await asyncio.gather(*calls)

    winners = [r for r in results if r[0] == grpc.StatusCode.OK]
    losers = [r for r in results if r[0] != grpc.StatusCode.OK]
    assert len(winners) == 3
    assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "'echo'" in msg for code, msg in losers), losers
    # checked in etcd itself: one claim per VM, each claim in a live pool of the consumer it names
    from mapping import keys

    store = await cluster.open_store()
    try:
        snap = await store.snapshot(keys.ROOT)
    finally:
        await store.close()
    records = [keys.decode(kv.key, kv.value, kv.create_revision) for kv in snap.items]
    claims = [r for kv, r in zip(snap.items, records) if kv.key.startswith(keys.CLAIMS)]
    pools = {r.lease_id: r for r in records if type(r).__name__ == "Pool"}
    assert len(claims) == 3 and len({c.vm for c in claims}) == 3
    assert all(pools[c.lease_id].consumer_vm == c.consumer_vm for c in claims)


async def test_a_busy_pool_grows_to_max_pool_then_requests_wait_then_are_exhausted(cluster):
    topo = start(cluster, vms=4, max_pool=2, handler="tests.handlers:sleepy")
    consumer = topo.consumers[0].address
    slow = [asyncio.create_task(send_status(consumer, "10.1.0.1", b"1.5", timeout=10)) for _ in range(2)]

    async def pool_size() -> int:
        found = await leases(topo.registry.address)
        return len(found[0].members) if found else 0

    async def exhausted() -> str:  # a request that cannot wait, once both members run a slow one
        code, msg = await send_status(consumer, "10.1.0.1", b"0", timeout=0.5)
        return msg if code == grpc.StatusCode.RESOURCE_EXHAUSTED else ""

    assert "max_pool 2" in await eventually_async(exhausted, what="both members busy")
    assert await pool_size() == 2  # the pool had to grow to 2
    waits = asyncio.create_task(send_status(consumer, "10.1.0.1", b"0", timeout=8))  # waits for a free VM
    assert await waits == (grpc.StatusCode.OK, "")
    assert [await t for t in slow] == [(grpc.StatusCode.OK, "")] * 2
    assert await pool_size() == 2  # never past max_pool


async def test_a_producer_vm_never_runs_two_requests_at_once(cluster):
    topo = start(cluster, vms=2, max_pool=2, handler="work", handler_options=("iterations=3000",))
    consumer = topo.consumers[0].address
    results = await asyncio.gather(*(send_status(consumer, "10.1.0.1", b"x", timeout=20) for _ in range(60)))

    assert results == [(grpc.StatusCode.OK, "")] * 60
    runs = checker.load(executions=history(cluster)).executions
    assert len(runs) == 60 and len({r.vm for r in runs}) == 2
    assert checker.overlapping(runs) == []


async def test_an_idle_lease_is_released(cluster):
    topo = start(cluster, idle=1.0)
    await send(topo.consumers[0].address, "10.1.0.1")
    assert len(await leases(topo.registry.address)) == 1
    async def released() -> bool:
        return await leases(topo.registry.address) == []

    await eventually_async(released, what="the idle lease released")


async def test_leases_of_a_killed_consumer_host_expire_and_the_vms_go_to_another_consumer(cluster):
    topo = start(cluster, vms=1, max_pool=1, ttl=2, consumers=[["10.1.0.1"], ["10.1.0.2"]])
    first, second = topo.consumers
    await send(first.address, "10.1.0.1")
    code, msg = await send_status(second.address, "10.1.0.2")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    cluster.signal("c1")  # SIGKILL: nobody renews its lease any more
    async def served() -> bool:  # within TTL 2 s + 1 s
        code, msg = await send_status(second.address, "10.1.0.2", timeout=2)
        assert code == grpc.StatusCode.OK, msg
        return True

    await eventually_async(served, timeout_s=15, what="the second consumer VM served")
    [lease] = await leases(topo.registry.address)
    assert lease.consumer_vm == "10.1.0.2"


async def test_kv_state_stored_in_a_leased_vm_reads_back_from_the_same_vm(cluster):
    topo = start(cluster, vms=2, max_pool=1, handler="kv")
    consumer = topo.consumers[0].address
    assert (await send(consumer, "10.1.0.1", b"PUT colour blue")).payload == b"OK"
    assert (await send(consumer, "10.1.0.1", b"GET colour")).payload == b"blue"
    code, msg = await send_status(consumer, "10.1.0.1", b"FROB x")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kv handler" in msg


async def test_the_consumer_host_refuses_unattached_spoofed_unknown_and_cross_network_requests(cluster):
    topo = start(cluster)
    consumer = topo.consumers[0].address
    cases = {
        "unattached": (await send_status(consumer, "10.1.0.99", token="tok-10.1.0.99")),
        "spoofed": (await send_status(consumer, "10.1.0.1", token="not-the-token")),
        "unknown target": (await send_status(consumer, "10.1.0.1", target="10.1.255.9:7")),
        "other network": (await send_status(consumer, "10.1.0.1", target="10.2.255.1:7")),
        "malformed target": (await send_status(consumer, "10.1.0.1", target="nonsense")),
    }
    assert cases["unattached"][0] == grpc.StatusCode.PERMISSION_DENIED and "not a consumer VM attached" in cases["unattached"][1]
    assert cases["spoofed"][0] == grpc.StatusCode.UNAUTHENTICATED and "spoofed" in cases["spoofed"][1]
    assert cases["unknown target"][0] == grpc.StatusCode.NOT_FOUND and "10.1.255.9:7" in cases["unknown target"][1]
    # refused without naming the other tenant's network (SPEC §10)
    assert cases["other network"][0] == grpc.StatusCode.PERMISSION_DENIED and "'red'" not in cases["other network"][1]
    assert cases["malformed target"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert await leases(topo.registry.address) == []  # nothing was leased for any of them
    assert (await send(consumer, "10.1.0.1")).payload == b"ping"  # and the host still serves


def test_demo_json_keeps_its_promises(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leasenet", "demo", "--json", "--requests", "300",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["requests"] >= 300 and summary["lost"] == 0 and summary["exclusivity_violations"] == 0
    assert summary["ok"] + summary["errors"] == summary["requests"] and summary["leases_granted"] >= 3
    assert summary["failover_s"] is not None and summary["vm_replaced_s"] is not None
    assert summary["gets_after_put"]["wrong"] == 0 and summary["gets_after_put"]["kept"] > 0
    assert summary["reset"]["kept_under_lease"] and summary["reset"]["gone_after_reset"]
    assert summary["per_vm_requests"]  # the VMs' own records of the calls they ran
    # the consumer host's /metrics counted every OK call (the workload's, and its first Whoami and the reset's)
    assert summary["metrics_ok"] >= summary["ok"]


def test_demo_stops_every_process_it_started_on_ctrl_c(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "leasenet", "demo", "--requests", "1000000", "--workdir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        consumer_ready = tmp_path / "consumer1.ready"
        eventually(lambda: consumer_ready.exists() or demo.poll() is not None, 60, what="the demo's consumer host")
        assert consumer_ready.exists(), demo.stdout.read() if demo.stdout else ""
        pids = [json.loads(p.read_text())["pid"] for p in tmp_path.glob("*.ready")]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 130
    finally:
        if demo.poll() is None:  # never leave a demo running: SIGTERM cleans up like Ctrl-C
            demo.terminate()
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                demo.kill()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    assert len(pids) == 5 and not [pid for pid in pids if alive(pid)]  # 2 registries, 2 producers, 1 consumer
    # and the producer VMs, the hosts' own processes: none outlives the demo
    left = subprocess.run(["pgrep", "-f", f"examples.notebook.server.*{tmp_path}"], capture_output=True, text=True)
    assert not left.stdout.strip(), left.stdout

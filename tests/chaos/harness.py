"""The chaos harness: a whole leasenet cluster as separate processes, each on its own loopback
address, a fixed load from `leasenet traffic`, faults injected on a schedule, and every history a
checker needs recorded (requests, executions, claims with revisions, faults).

    etcd          127.0.0.2 (.3, .4 for three members)
    registries    127.0.0.11, .12
    producers     127.0.0.21 .. .23   (VMs 10.1.<i>.1 ..)
    consumers     127.0.0.31, .32     (consumer VMs 10.1.0.<n>)

A schedule is a list of Steps; each waits until a share of the requests has been answered, does
its fault, keeps it for `hold_s` and heals it (start again / SIGCONT). Ports are chosen once, so a
restarted process comes back on its old address."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from leasenet import checker
from leasenet.checker import Fault, Report
from leasenet.cluster import ConsumerVm, LocalCluster, Proc, consumer_toml, write_toml
from leasenet.etcd import EtcdCluster, free_port
from mapping import keys
from mapping.config import ClusterConfig, to_toml
from mapping.model import LeasePolicy, Network, Service, parse_target
from mapping.model import Claim, Pool as PoolRecord, Record
from mapping.replica import Replica
from tests.conftest import eventually_async

REPO = Path(__file__).resolve().parents[2]
NETWORK, SERVICE, TARGET = "blue", "echo", "10.1.255.1:7"
LEASE_TTL_S = 3
IDLE_RELEASE_S = 120  # longer than a run: every lease that ends does so because of a fault
PRODUCERS, VMS_PER_PRODUCER = 3, 8  # 16 VMs left with a host down: every pool can still hold max_pool
CONSUMERS, CONSUMER_VMS_PER_HOST = 2, 4
REQUEST_TIMEOUT_S = 4.0

ETCD_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
REGISTRY_HOSTS = ["127.0.0.11", "127.0.0.12"]
PRODUCER_HOSTS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
CONSUMER_HOSTS = ["127.0.0.31", "127.0.0.32"]


def cluster_toml(lease_ttl_s: int = LEASE_TTL_S) -> str:
    policy = LeasePolicy(min_pool=1, max_pool=2, lease_ttl_s=lease_ttl_s, idle_release_s=IDLE_RELEASE_S)
    return to_toml(ClusterConfig([Network(NETWORK, 100)], [Service(SERVICE, NETWORK, *parse_target(TARGET), policy)]))


def consumer_vms(host_index: int) -> list[str]:
    first = host_index * CONSUMER_VMS_PER_HOST + 1
    return [f"10.1.0.{n}" for n in range(first, first + CONSUMER_VMS_PER_HOST)]


def producer_vms(index: int) -> list[str]:
    return [f"{NETWORK}/10.1.{index + 1}.{n}" for n in range(1, VMS_PER_PRODUCER + 1)]


def attached(addresses: list[str], consumer_host: str = "") -> list[ConsumerVm]:
    return [ConsumerVm(NETWORK, a, f"tok-{a}", consumer_host) for a in addresses]


@dataclass(frozen=True, slots=True)
class Step:
    at: float  # share of the requests answered before the fault
    kind: str  # producer | consumer | registry | etcd
    action: str  # sigkill | sigstop | restart
    target: str  # a process name, or etcd0/etcd1/etcd2
    hold_s: float = 0.0  # how long it stays killed/stopped before the heal


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    etcd_members: int
    requests: int
    steps: list[Step]
    concurrency: int = 16
    rate: float = 0.0  # requests/s over all VMs; 0 = unpaced


@dataclass
class Outcome:
    scenario: Scenario
    history: checker.Recording
    report: Report
    table: str
    workdir: Path
    traffic: dict[str, Any] = field(default_factory=dict)


class ClaimRecorder:
    """Follows etcd (a Replica: gap-free, resumes after outages, reloads after compaction) and
    writes a line per claim and per pool created or deleted, with revisions and when it was seen."""

    def __init__(self, cluster: LocalCluster, stream: IO[str]) -> None:
        self.cluster = cluster  # its etcd, reached as root
        self.stream = stream
        self.replica: Replica | None = None

    def live_claims(self) -> list[Claim]:
        return list(self.replica.state.claims.values()) if self.replica else []

    def _on_change(self, key: str, old: Record | None, new: Record | None, revision: int) -> None:
        if keys.is_member_key(key):
            return  # a claim's mirror under its pool: the claim itself is recorded
        now = time.monotonic_ns()
        if isinstance(old, Claim) and (new is None or (isinstance(new, Claim) and new.revision != old.revision)):
            self._write({"event": "released", "vm": old.vm, "token": old.revision, "revision": revision,
                         "seen_ns": now})
        if isinstance(new, Claim):  # a new claim, or (never expected) one that changed its lessee in place
            self._write({"event": "claimed", "vm": new.vm, "token": new.revision, "lease_id": format(new.lease_id, "x"),
                         "consumer_vm": new.consumer_vm, "consumer_host": new.consumer_host, "revision": revision,
                         "producer_host": new.host_id, "seen_ns": now})
        if isinstance(old, PoolRecord) and new is None:
            self._write({"event": "pool-ended", "lease_id": format(old.lease_id, "x"), "revision": revision,
                         "seen_ns": now})
        if isinstance(new, PoolRecord) and old is None:
            self._write({"event": "pool-granted", "lease_id": format(new.lease_id, "x"), "consumer_vm": new.consumer_vm,
                         "consumer_host": new.consumer_host, "revision": revision, "seen_ns": now})

    def _write(self, line: dict[str, Any]) -> None:
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    async def run(self, synced: asyncio.Event) -> None:
        store = await self.cluster.open_store()
        self.replica = Replica(store)
        self.replica.subscribe(self._on_change)
        task = asyncio.create_task(self.replica.run())
        try:
            await self.replica.synced.wait()
            synced.set()
            await task
        finally:
            task.cancel()
            await store.close()


class OutcomeCounter:
    """How many outcome lines the traffic history holds so far (read incrementally)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def poll(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # count whole lines only
            self.count += chunk[:end].count(b'"event":"outcome"')
            self.offset += end
        return self.count


class Chaos:
    def __init__(self, workdir: Path, scenario: Scenario, cluster_text: str | None = None) -> None:
        self.workdir = workdir
        self.scenario = scenario
        self.cluster_text = cluster_text or cluster_toml()  # networks and services the registries publish
        self.cluster = LocalCluster(workdir)
        self.cluster.env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        hosts = ETCD_HOSTS[:scenario.etcd_members]
        self.etcd = EtcdCluster(workdir, size=scenario.etcd_members, hosts=hosts,
                                tls=self.cluster.etcd_files(tuple(hosts)))
        self.listen = {f"registry{i + 1}": f"{h}:{free_port(h)}" for i, h in enumerate(REGISTRY_HOSTS)}
        self.listen |= {f"producer{i + 1}": f"{h}:{free_port(h)}" for i, h in enumerate(PRODUCER_HOSTS[:PRODUCERS])}
        self.listen |= {f"consumer{i + 1}": f"{h}:{free_port(h)}" for i, h in enumerate(CONSUMER_HOSTS[:CONSUMERS])}
        self.faults_path = workdir / "faults.jsonl"
        self.claims_path = workdir / "claims.jsonl"
        self.requests_path = workdir / "requests.jsonl"
        self.recorder: ClaimRecorder | None = None
        self.unclean_drains: list[checker.Violation] = []

    # --- topology ------------------------------------------------------------------------------
    def start(self) -> None:
        self.etcd.start()
        self.cluster.use_etcd(self.etcd)
        config = write_toml(self.workdir / "cluster.toml", self.cluster_text)
        registries = [self.cluster.spawn(name, "registry", "--host-id", name, "--listen", self.listen[name],
                                         "--cluster-config", str(config), wait=False)
                      for name in ("registry1", "registry2")]
        for proc in registries:
            self.cluster.wait_ready(proc)
        producers = []
        for i in range(PRODUCERS):
            name = f"producer{i + 1}"
            producers.append(self.cluster.spawn(
                name, "producer-host", "--host-id", name, "--listen", self.listen[name], "--network", NETWORK,
                "--service", SERVICE, "--vms", str(VMS_PER_PRODUCER), "--vm-address-start", f"10.1.{i + 1}.1",
                "--handler", "tests.handlers:sleepy", "--handler-option", "seconds=0.02",
                "--history", str(self.workdir / f"{name}.history.jsonl"), wait=False))
        consumers = []
        for i in range(CONSUMERS):
            name = f"consumer{i + 1}"
            config_path = write_toml(self.workdir / f"{name}.toml", consumer_toml(attached(consumer_vms(i))))
            consumers.append(self.cluster.spawn(
                name, "consumer-host", "--host-id", name, "--listen", self.listen[name],
                "--registry", ",".join(self.listen[r] for r in ("registry1", "registry2")),
                "--config", str(config_path), wait=False))
        for proc in producers + consumers:
            self.cluster.wait_ready(proc)

    def traffic_toml(self) -> Path:
        vms = [vm for i in range(CONSUMERS) for vm in attached(consumer_vms(i), self.listen[f"consumer{i + 1}"])]
        text = consumer_toml(vms, target=TARGET, timeout_s=REQUEST_TIMEOUT_S, idempotent_share=0.5,
                             rate=self.scenario.rate)
        return write_toml(self.workdir / "traffic.toml", text)

    # --- faults --------------------------------------------------------------------------------
    def _affects(self, step: Step) -> tuple[str, ...]:
        if step.kind == "consumer":
            return tuple(f"{NETWORK}/{a}" for a in consumer_vms(int(step.target.removeprefix("consumer")) - 1))
        if step.kind == "producer" and self.recorder is not None:
            vms = set(producer_vms(int(step.target.removeprefix("producer")) - 1))
            return tuple(sorted({c.consumer_vm for c in self.recorder.live_claims() if c.vm in vms}))
        return ()

    def _do(self, step: Step) -> None:
        sig = {"sigkill": signal.SIGKILL, "sigstop": signal.SIGSTOP, "restart": signal.SIGTERM}[step.action]
        if step.kind == "etcd":
            index = int(step.target.removeprefix("etcd"))
            self.etcd.kill(index, sig)
            if sig == signal.SIGTERM:
                self.etcd.members[index].process.wait(20)  # type: ignore[union-attr]
        elif sig == signal.SIGTERM:
            code = self.cluster.stop(step.target, timeout_s=20)  # drain, then exit
            if code != 0:
                self.unclean_drains.append(checker.Violation(
                    "unclean-drain", f"{step.target} exited with {code} after SIGTERM instead of draining"))
        else:
            self.cluster.signal(step.target, sig)

    def _heal(self, step: Step) -> None:
        if step.kind == "etcd":
            index = int(step.target.removeprefix("etcd"))
            if step.action == "sigstop":
                self.etcd.kill(index, signal.SIGCONT)
            else:
                self.etcd.restart(index)
        elif step.action == "sigstop":
            self.cluster.signal(step.target, signal.SIGCONT)
        else:
            self.cluster.restart(step.target)

    async def inject(self, step: Step) -> Fault:
        affects = self._affects(step)
        at = time.monotonic_ns()
        await asyncio.to_thread(self._do, step)
        await asyncio.sleep(step.hold_s)  # the fault's duration, part of its definition
        heal_started = time.monotonic_ns()
        await asyncio.to_thread(self._heal, step)
        # A restarted host serves (and may be granted leases) before its ready file is seen, and its
        # start now waits for its previous life's liveness lease to lapse: it is back from the moment
        # it was started, so nothing the new process holds is charged to the killed one.
        healed = heal_started if step.kind != "etcd" and step.action != "sigstop" else time.monotonic_ns()
        recover_from = "heal" if step.kind == "consumer" else "fault"
        return Fault(step.kind, step.action, step.target, at, healed, recover_from, affects)

    # --- a run ---------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        claims_stream = open(self.claims_path, "a", encoding="utf-8")
        self.recorder = ClaimRecorder(self.cluster, claims_stream)
        synced = asyncio.Event()
        recorder = asyncio.create_task(self.recorder.run(synced))
        await asyncio.wait_for(synced.wait(), 20)
        env = self.cluster.process_env()
        log = open(self.workdir / "traffic.log", "wb")
        traffic = subprocess.Popen(
            [sys.executable, "-m", "leasenet", "traffic", "--consumer-host",
             ",".join(self.listen[f"consumer{i + 1}"] for i in range(CONSUMERS)), "--config",
             str(self.traffic_toml()), "--requests", str(self.scenario.requests), "--concurrency",
             str(self.scenario.concurrency), "--history", str(self.requests_path), "--json",
             *self.cluster.tls_args()],
            stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        faults: list[Fault] = []
        counter = OutcomeCounter(self.requests_path)
        try:
            with open(self.faults_path, "a", encoding="utf-8") as fault_log:
                for step in self.scenario.steps:
                    def due(step: Step = step) -> bool:
                        if traffic.poll() is not None:
                            raise RuntimeError(f"the traffic ended before the fault {step} (schedule too late)")
                        return counter.poll() >= step.at * self.scenario.requests

                    await eventually_async(due, timeout_s=300, interval_s=0.02, what=f"the moment of {step}")
                    fault = await self.inject(step)
                    faults.append(fault)
                    fault_log.write(json.dumps(asdict(fault)) + "\n")
                    fault_log.flush()
            out, _ = await asyncio.to_thread(traffic.communicate, timeout=300)
            summary = json.loads(out or b"{}")
            # watch long enough that a killed consumer host's leases had time to end
            killed = [f.at_ns for f in faults if (f.kind, f.action) == ("consumer", "sigkill")]
            until = max(killed, default=0) + int((LEASE_TTL_S + 1.5) * checker.NS)
            await asyncio.sleep(max(0, until - time.monotonic_ns()) / checker.NS)  # a span to observe, not a sync
            observed_until = time.monotonic_ns()
        finally:
            if traffic.poll() is None:
                traffic.kill()
                traffic.wait(10)
            log.close()
            recorder.cancel()
            try:
                await recorder
            except (asyncio.CancelledError, Exception):
                pass
            claims_stream.close()
        return self.outcome(faults, summary, observed_until)

    def outcome(self, faults: list[Fault], traffic: dict[str, Any], observed_until_ns: int) -> Outcome:
        history = checker.load([self.requests_path], sorted(self.workdir.glob("*.history.jsonl")),
                               [self.claims_path], [self.faults_path])
        report = checker.check(history, lease_ttl_s=LEASE_TTL_S, idle_release_s=IDLE_RELEASE_S,
                               observed_until_ns=observed_until_ns)
        if len(history.requests) != self.scenario.requests:  # never even recorded as sent
            report.violations.append(checker.Violation(
                "lost", f"{self.scenario.requests - len(history.requests)} request(s) missing from the history"))
        report.violations.extend(self.unclean_drains)
        return Outcome(self.scenario, history, report, checker.render(self.scenario.name, report), self.workdir,
                       traffic)

    def close(self) -> None:
        self.cluster.close()

    def log_tails(self, lines: int = 30) -> str:
        procs: list[Proc] = list(self.cluster.procs.values())
        return "\n".join(f"===== {p.name} =====\n{p.log_tail(lines)}" for p in procs)


def run_scenario(workdir: Path, scenario: Scenario) -> Outcome:
    chaos = Chaos(workdir, scenario)
    try:
        chaos.start()
        return asyncio.run(chaos.run())
    except BaseException:
        print(chaos.log_tails(), file=sys.stderr)
        raise
    finally:
        chaos.close()

"""The whole docker/compose.yaml deployment with the real `leasenet` CLI in every container:
3 etcd members, 2 registries, 3 producer hosts, 2 consumer hosts and a traffic job, secure (mutual
TLS on every connection, etcd auth with one role per kind). First, from the traffic container (the
consumer VMs' side, network `vms`), only the consumer hosts are reachable: etcd, registries and
producer hosts are not, by name or by address. While the traffic runs, containers are killed,
paused and cut off the network:

    producer1  docker kill (SIGKILL), then docker start
    etcd       the leader: docker kill, then docker start
    consumer2  docker pause for longer than the lease TTL, then docker unpause
    producer2  docker network disconnect for longer than its liveness TTL, then connect again

Then the histories (traffic outcomes, producer executions, and claims recorded from etcd by a
recorder container on the `core` network, reading etcd as operator/admin) go through
leasenet/checker.py: every request got exactly one outcome, no producer VM was in two pools at
once, no two executions overlapped on one VM, no non-idempotent request ran twice, and no other
invariant the checker knows broke. Leases are also inspected from the host through the registries'
published ports (`leasenet leases --json --tls-dir docker/certs/operator`). Requests may
legitimately fail during faults (a killed producer's in-flight non-idempotent requests end in
UNAVAILABLE "delivery unknown", a paused consumer host's in DEADLINE_EXCEEDED): those are
outcomes, counted and printed, not failures of the test.
Finally `down -v` must leave no container, network or volume.

The faults and the checker's figures are printed in the terminal summary ("docker deployment
figures"), also under -q."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from leasenet import checker
from leasenet.checker import Fault
from mapping.config import load_cluster_config
from tests.conftest import eventually
from tests.docker.conftest import CERTS_DIR, DOCKER_DIR, ETCD_ENDPOINTS, FIGURES, TLS_DIR, ComposeProject, docker
from tests.docker.test_etcd_cluster import leader

pytestmark = pytest.mark.docker

SERVERS = ("etcd1", "etcd2", "etcd3", "registry1", "registry2", "producer1", "producer2", "producer3",
           "consumer1", "consumer2", "prometheus")
PRODUCERS = ("producer1", "producer2", "producer3")
VMS_PER_PRODUCER = 4  # --vms in compose.yaml
CONSUMER_VMS = {"consumer1": ("blue/10.1.0.1", "blue/10.1.0.2"), "consumer2": ("blue/10.1.0.3", "blue/10.1.0.4")}
SERVICE = load_cluster_config(DOCKER_DIR / "config" / "cluster.toml").services[0]
REQUESTS = 8000  # at traffic.toml's rate of 100/s: 80 s, room for four faults, each healed before the next
RECORDER = Path(__file__).with_name("claim_recorder.py")
OPERATOR_TLS = CERTS_DIR / "operator"  # operator/admin's certificate (docker/make-certs.sh)
# Every server port, and what the consumer VMs' side (network `vms`) may reach of them.
PORTS = {"etcd1": 2379, "etcd2": 2380, "registry1": 7000, "producer1": 7100, "producer2": 7100,
         "consumer1": 7200, "consumer2": 7200}
REACHABLE_FROM_VMS = {"consumer1", "consumer2"}
FAULT_WINDOW_GRACE_S = 5.0  # errors counted against a fault: from it until this long after its heal


@dataclass(frozen=True, slots=True)
class Step:
    at: float  # share of the requests answered before the fault
    kind: str  # producer | consumer | etcd (leasenet.checker.Fault.kind)
    action: str  # sigkill | pause | partition
    target: str  # a compose service; "leader" = the etcd leader at that moment
    hold_s: float  # how long the fault lasts before the heal (part of the fault's definition)


STEPS = [
    Step(0.10, "producer", "sigkill", "producer1", hold_s=4.0),  # > liveness TTL (3 s): its VMs leave the pools
    Step(0.30, "etcd", "sigkill", "leader", hold_s=3.0),
    Step(0.50, "consumer", "pause", "consumer2", hold_s=SERVICE.policy.lease_ttl_s + 2.0),  # its leases lapse
    Step(0.70, "producer", "partition", "producer2", hold_s=5.0),  # > liveness TTL: it is declared dead
]


# --- the host side: the leasenet CLI over the registries' published ports ----------------------------
def leasenet(*args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "leasenet", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"leasenet {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def inspect(kind: str, port: int, *args: str) -> list[dict[str, Any]]:
    """`leasenet leases|hosts|vms|services --json` through one registry's published port, over mutual
    TLS as operator/admin (the default --identity)."""
    return json.loads(leasenet(kind, "--registry", f"127.0.0.1:{port}", "--json", "--tls-dir", str(OPERATOR_TLS),
                               *args).stdout)[kind]


def lease_view(leases: list[dict[str, Any]]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """lease id -> (consumer VM, member VM ids)."""
    return {lease["lease_id"]: (f"{lease['consumer_network']}/{lease['consumer_vm']}",
                                tuple(sorted(m["vm_id"] for m in lease["members"]))) for lease in leases}


def check_leases(leases: list[dict[str, Any]], producers: set[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """What the inspection API shows must itself respect the invariants."""
    view = lease_view(leases)
    members = Counter(vm for _, vms in view.values() for vm in vms)
    assert not [vm for vm, n in members.items() if n > 1], f"a VM in two leases at once: {view}"
    consumers = Counter(consumer for consumer, _ in view.values())
    assert set(consumers) <= {vm for vms in CONSUMER_VMS.values() for vm in vms}, view
    assert all(n == 1 for n in consumers.values()), f"a consumer VM with two pools of one service: {view}"
    assert all(len(vms) <= SERVICE.policy.max_pool for _, vms in view.values()), view
    assert all(m["host_id"] in producers for lease in leases for m in lease["members"]), leases
    return view


# --- Prometheus, through its published port -----------------------------------------------------------
def prometheus(project: ComposeProject, query: str) -> dict[str, float]:
    """An instant query's answer: instance (or the series' one label's value, or its labels) -> value."""
    url = f"http://127.0.0.1:{project.prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    def name(labels: dict[str, str]) -> str:
        if "instance" in labels:
            return labels["instance"]
        return next(iter(labels.values())) if len(labels) == 1 else json.dumps(labels, sort_keys=True)
    return {name(r["metric"]): float(r["value"][1]) for r in body["data"]["result"]}


HOST_TARGETS = {f"{s}:9100" for s in ("producer1", "producer2", "producer3", "consumer1", "consumer2")}


def prometheus_saw(project: ComposeProject, window_s: int) -> dict[str, dict[str, float]]:
    """What Prometheus scraped during the run (SPEC §11): requests counted by every host, the
    killed producer host's target down, the registries seeing a producer host's liveness go, and
    the leasing that followed (grants and grows at the registries)."""
    window = f"[{window_s}s]"
    return {
        "requests by host": prometheus(project, f"sum by (instance) (increase(leasenet_requests_total{window}))"),
        "producer1 up, lowest": prometheus(project, f'min_over_time(up{{instance="producer1:9100"}}{window})'),
        "live producer hosts, lowest": prometheus(
            project, f'min by (instance) (min_over_time(leasenet_live_hosts{{kind="producer"}}{window}))'),
        "lease operations ok": prometheus(
            project, f'sum by (op) (increase(leasenet_lease_operations_total{{result="ok"}}{window}))'),
        "targets up now": prometheus(project, 'up{job=~"registry|producer|consumer"}'),
    }


def scraped_again(project: ComposeProject, window_s: int) -> dict[str, dict[str, float]] | None:
    """prometheus_saw() once every host's target is up again (after the heals), else None."""
    seen = prometheus_saw(project, window_s)
    return seen if {t for t, up in seen["targets up now"].items() if up == 1} >= HOST_TARGETS else None


# --- the claim recorder: a container on the internal network, its lines on our side --------------------
class Recorder:
    def __init__(self, project: ComposeProject, out: Path) -> None:
        self.name = f"{project.name}_recorder"
        self.out = out
        self.stream = open(out, "w", encoding="utf-8")
        self.log = open(out.with_suffix(".log"), "w", encoding="utf-8")  # a pipe could fill up and block it
        self.proc = subprocess.Popen(
            ["docker", "run", "--rm", "--init", "--name", self.name, "--label", f"io.leasenet.test={project.name}",
             "--network", project.network("core"), "-v", f"{RECORDER}:/recorder.py:ro",
             "-v", f"{OPERATOR_TLS}:{TLS_DIR}:ro", "--entrypoint", "python",
             project.env.get("LEASENET_IMAGE", "leasenet:latest"), "/recorder.py", ETCD_ENDPOINTS, TLS_DIR],
            stdout=self.stream, stderr=self.log)

    def wait_synced(self, timeout: float = 60) -> None:
        def synced() -> bool:
            if self.proc.poll() is not None:  # not an AssertionError: poll() would keep waiting
                raise RuntimeError(f"recorder exited: {self.out.with_suffix('.log').read_text()[-2000:]}")
            return '"event":"synced"' in self.out.read_text()
        eventually(synced, timeout, 0.2, "claim recorder synced with etcd")

    def stop(self) -> None:
        docker("stop", "-t", "2", self.name, check=False, timeout=60)
        try:
            self.proc.wait(30)
        finally:
            docker("rm", "-f", self.name, check=False)
            self.stream.close()
            self.log.close()


# --- the run ------------------------------------------------------------------------------------------
def answered(project: ComposeProject) -> int:
    """Outcome lines in the traffic history so far (read inside the running traffic container)."""
    proc = project.exec("traffic", "grep", "-c", '"event":"outcome"', "/history/traffic.jsonl", check=False)
    return int(proc.stdout.strip() or 0)


def affected(step: Step, port: int) -> tuple[str, ...]:
    """Consumer VMs a fault hits: those of a consumer host, those leasing a producer host's VMs now
    (asked through the inspection API), or all of them (())."""
    if step.kind == "consumer":
        return CONSUMER_VMS[step.target]
    if step.kind == "producer":
        leases = inspect("leases", port, "--producer-host", step.target)
        return tuple(sorted({consumer for consumer, _ in lease_view(leases).values()}))
    return ()


def inject(project: ComposeProject, step: Step, target: str, port: int) -> Fault:
    affects = affected(step, port)
    do, heal = {
        "sigkill": (project.kill, project.start),
        "pause": (project.pause, project.unpause),
        "partition": (project.disconnect, project.connect),
    }[step.action]
    at = time.monotonic_ns()
    do(target)
    time.sleep(step.hold_s)  # the fault's duration, not a synchronisation
    heal(target)
    healed = time.monotonic_ns()
    project.wait_healthy(target, timeout=120)
    recover_from = "heal" if step.kind == "consumer" else "fault"  # a paused host answers nothing until then
    return Fault(step.kind, step.action, target, at, healed, recover_from, affects)


def fault_figures(faults: list[Fault], requests: list[checker.Request], t0: int) -> list[str]:
    lines = [f"  {'t s':>6} {'fault':<20} {'target':<10} {'held s':>6}  outcomes done in (fault .. heal + "
             f"{FAULT_WINDOW_GRACE_S:g} s)"]
    for f in faults:
        end = (f.healed_ns or f.at_ns) + int(FAULT_WINDOW_GRACE_S * checker.NS)
        codes = Counter(r.outcome.status for r in requests
                        if r.outcome is not None and f.at_ns <= r.outcome.done_ns <= end)
        ok = codes.pop(checker.OK, 0)
        errors = ", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "none"
        lines.append(f"  {(f.at_ns - t0) / checker.NS:6.1f} {f.name:<20} {f.target:<10} "
                     f"{((f.healed_ns or f.at_ns) - f.at_ns) / checker.NS:6.1f}  ok {ok}, {errors}; "
                     f"affects {', '.join(f.affects) or 'all'}")
    return lines


def fault_effects(faults: list[Fault], history: checker.Recording) -> tuple[list[str], list[str]]:
    """What each fault did to the leases, from the recorded claims and pools (so that a fault that
    did nothing cannot pass unnoticed). Returns (figure lines, broken promises): a producer host
    killed or cut off longer than its liveness TTL must leave every pool (SPEC §6)."""
    def alive(start: int, end: int | None, at: int) -> bool:
        return start <= at and (end is None or end > at)

    lines, broken = [], []
    for f in faults:
        healed = f.healed_ns or f.at_ns
        if f.kind == "producer":
            held = [c for c in history.claims if c.producer_host == f.target and alive(c.seen_ns, c.ended_ns, f.at_ns)]
            gone = [c for c in held if c.ended_ns is not None
                    and c.ended_ns <= healed + int(FAULT_WINDOW_GRACE_S * checker.NS)]
            lines.append(f"  {f.name} {f.target}: {len(held)} of its VMs were leased, {len(gone)} left their pools "
                         f"by heal + {FAULT_WINDOW_GRACE_S:g} s")
            broken += [f"{c.vm} stayed in lease {c.lease_id} of {c.consumer_vm} after {f.name} of {f.target}"
                       for c in held if c not in gone]
        elif f.kind == "consumer":
            held = [p for p in history.pools if p.consumer_host == f.target and alive(p.seen_ns, p.ended_ns, f.at_ns)]
            lapsed = [p for p in held if p.ended_ns is not None and p.ended_ns <= healed]
            regranted = [p for p in history.pools if p.consumer_host == f.target and p.seen_ns > f.at_ns]
            lines.append(f"  {f.name} {f.target}: {len(held)} pools, {len(lapsed)} lapsed while it was paused, "
                         f"{len(regranted)} granted again after")
    return lines, broken


def core_address(project: ComposeProject, service: str) -> str:
    networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", project.container(service)).stdout)
    return networks[project.network("core")]["IPAddress"]


def reachability(project: ComposeProject) -> dict[str, bool]:
    """What a one-off traffic container (the consumer VMs' side, on `vms` only) can open a TCP
    connection to: each server by service name, and by its address on `core` (a name it cannot
    resolve proves nothing about routes). service:port -> connected."""
    targets = {f"{s}:{p}": f"{s}:{p}" for s, p in PORTS.items()}
    targets |= {f"{s}:{p} ({(ip := core_address(project, s))})": f"{ip}:{p}"
                for s, p in PORTS.items() if s not in REACHABLE_FROM_VMS}
    answers = project.probe("traffic", "connect", *targets.values())
    return {name: answers[address] == "connected" for name, address in targets.items()}


@dataclass
class Run:
    faults: list[Fault]
    t0: int
    reachable: dict[str, bool]  # from the traffic container: service:port -> connected
    snapshots: list[str]  # what `leasenet leases --json` showed before each fault
    final: dict[str, tuple[str, tuple[str, ...]]]  # ... and after the run
    summary: str  # the traffic job's own last line
    metrics: dict[str, dict[str, float]]  # what Prometheus saw (prometheus_saw)


def drive(project: ComposeProject, tmp_path: Path, timings: dict[str, float]) -> Run:
    """Up, inspect, record claims, run the traffic with the faults, inspect again, copy histories."""
    port, port2 = project.registry_port, project.registry2_port
    started = time.monotonic()
    project.up(*SERVERS, timeout=240)
    timings["up + healthy"] = time.monotonic() - started

    # Inspection from the host through both registries' published ports.
    producers = set(PRODUCERS)
    hosts = {h["host_id"]: h for h in inspect("hosts", port) if h["kind"] != "registry"}
    registries = {h["host_id"]: h["address"] for h in inspect("hosts", port) if h["kind"] == "registry"}
    assert registries == {"registry1": "registry1:7000", "registry2": "registry2:7000"}, registries
    assert {k: (h["kind"], h["address"]) for k, h in hosts.items()} == {
        **{p: ("producer", f"{p}:7100") for p in PRODUCERS}, **{c: ("consumer", f"{c}:7200") for c in CONSUMER_VMS}}
    # cluster.toml also publishes `notebook` (test_command_vms.py), whose producer hosts are not up here.
    service = {s["name"]: s for s in inspect("services", port2)}[SERVICE.name]
    assert (service["name"], service["target"], service["vms"]) == (
        SERVICE.name, SERVICE.target, len(PRODUCERS) * VMS_PER_PRODUCER)

    reachable = reachability(project)
    assert {name for name, ok in reachable.items() if ok} == {f"{s}:{PORTS[s]}" for s in REACHABLE_FROM_VMS}, (
        f"from the traffic container: {reachable}")

    recorder = Recorder(project, tmp_path / "claims.jsonl")
    try:
        recorder.wait_synced()
        project.up("traffic", wait=False)
        t0 = time.monotonic_ns()
        faults: list[Fault] = []
        snapshots: list[str] = []
        for step in STEPS:
            eventually(lambda: answered(project) >= step.at * REQUESTS
                       or project.state("traffic")["Status"] != "running", 300, 0.5,
                       f"{step.at:.0%} of the requests answered")
            assert project.state("traffic")["Status"] == "running", f"traffic ended before {step} (schedule too late)"
            view = check_leases(inspect("leases", port), producers)
            snapshots.append(f"  before {step.kind} {step.action}: {len(view)} leases, "
                             f"{sum(len(v) for _, v in view.values())} members")
            target = leader(project) if step.target == "leader" else step.target
            faults.append(inject(project, step, target, port))
            print(f"fault {faults[-1].name} {target}: at {(faults[-1].at_ns - t0) / checker.NS:.1f} s", flush=True)

        code = project.wait_exit("traffic", timeout=600)
        timings["traffic"] = (time.monotonic_ns() - t0) / checker.NS
        seen = eventually(lambda: scraped_again(project, int(timings["traffic"]) + 30), 60, 1.0,
                          "Prometheus scrapes every host again")
        summary = project.logs("traffic", tail=5).strip()
        assert code == 0, f"traffic exited {code}:\n{summary}"

        # After the heals: every host is back, all VMs registered, and both registries show the
        # same leases (their replicas converge), each respecting the invariants.
        eventually(lambda: {h["host_id"] for h in inspect("hosts", port) if h["kind"] != "registry"}
                   == producers | set(CONSUMER_VMS), 60, 0.5,
                   "every host registered again")
        eventually(lambda: len(inspect("vms", port2)) == len(PRODUCERS) * VMS_PER_PRODUCER, 60, 0.5,
                   "every VM registered again")
        final = eventually(lambda: (v := check_leases(inspect("leases", port), producers))
                           == check_leases(inspect("leases", port2), producers) and v, 30, 0.5,
                           "both registries show the same leases")
    finally:
        recorder.stop()
    project.copy_from("traffic", "/history", tmp_path / "history")  # docker cp: works after the exit
    (tmp_path / "faults.jsonl").write_text("".join(json.dumps(asdict(f)) + "\n" for f in faults))
    return Run(faults, t0, reachable, snapshots, final, summary.splitlines()[-1], seen)


def test_deployment_survives_kill_pause_and_partition(compose_project, leasenet_image, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    project = compose_project("lnd", env={"LEASENET_TRAFFIC_REQUESTS": str(REQUESTS)})
    try:
        run = drive(project, tmp_path, timings)
    except BaseException:
        project.print_logs(*SERVERS, "traffic")
        raise

    history_dir = tmp_path / "history"
    history = checker.load(requests=[history_dir / "traffic.jsonl"],
                           executions=sorted(history_dir.glob("producer*.jsonl")),
                           claims=[tmp_path / "claims.jsonl"], faults=[tmp_path / "faults.jsonl"])
    report = checker.check(history, lease_ttl_s=SERVICE.policy.lease_ttl_s,
                           idle_release_s=SERVICE.policy.idle_release_s)

    started = time.monotonic()
    project.down()
    timings["down -v"] = time.monotonic() - started
    left = project.leftovers()
    recorder_left = docker("ps", "-aq", "--filter", f"label=io.leasenet.test={project.name}").stdout.split()

    runs = Counter(e.vm.rsplit(".", 1)[0] + ".x" for e in history.executions)
    effects, broken = fault_effects(run.faults, history)
    figures = "\n".join([
        f"== docker deployment: project {project.name}, {REQUESTS} requests",
        f"traffic: {run.summary}",
        "from the traffic container (network vms): "
        + ", ".join(f"{name} {'connects' if ok else 'unreachable'}" for name, ok in run.reachable.items()),
        "faults injected (t = seconds after the traffic started):",
        *fault_figures(run.faults, history.requests, run.t0),
        "what the faults did to the leases (recorded from etcd):", *effects,
        "leases seen from the host (leasenet leases --json):", *run.snapshots,
        f"  after the run: {len(run.final)} leases: "
        + "; ".join(f"{c} -> {', '.join(vms)}" for c, vms in sorted(run.final.values())),
        f"recorded: {len(history.requests)} requests, {len(history.executions)} executions "
        f"({', '.join(f'{k} {n}' for k, n in sorted(runs.items()))}), {len(history.claims)} claims, "
        f"{len(history.pools)} pools",
        checker.render("checker (leasenet/checker.py)", report),
        "Prometheus (scraped every 2 s during the run):",
        *(f"  {what}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(values.items())) for what, values in run.metrics.items()),
        "timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
    ])
    FIGURES.append(figures)
    print("\n" + figures, flush=True)

    assert len(history.requests) == REQUESTS, "requests missing from the traffic history"
    assert report.lost == 0, "requests without an outcome"
    assert report.violations == [], "\n".join(f"{v.kind}: {v.detail}" for v in report.violations)
    assert history.executions and history.claims and history.pools, "a history is empty"
    assert broken == [], "\n".join(broken)
    assert left == {} and recorder_left == [], f"down -v left {left}, recorder {recorder_left}"
    requests = run.metrics["requests by host"]
    assert all(requests.get(t, 0) > 0 for t in HOST_TARGETS), f"a host's request counter did not move: {requests}"
    assert run.metrics["producer1 up, lowest"] == {"producer1:9100": 0.0}, "the killed producer host never showed down"
    assert min(run.metrics["live producer hosts, lowest"].values()) < len(PRODUCERS), (
        "the registries never saw a producer host's liveness go")
    operations = run.metrics["lease operations ok"]
    assert operations.get("grant", 0) > 0, f"no grant counted by the registries: {operations}"

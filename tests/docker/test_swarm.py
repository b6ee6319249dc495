"""docker/stack.yaml on a one-node swarm: deployed, faults under traffic, then a rolling upgrade of
every leasenet service under traffic with no failed request, then `docker stack rm` leaving nothing.

    swarm init (only if this engine is in no swarm; left at the end only if the test made it)
    stack deploy -> every service converged, every host registered (seen from an operator container
      on the attachable `ops` network, with the operator's certificate)
    phase 1, traffic (Send) and calls (VIP): a producer task SIGKILLed (swarm starts another, which
      registers under its own container's host id), consumer2's task paused past the lease TTL
    phase 2, traffic and calls again: docker/swarm-upgrade.sh moves every leasenet service, one after
      the other, to leasenet:next (this tree with another version label); each replaced host drains
    stack rm: no service, container, network, secret or config left; its volumes then removed

Phase 1 may answer errors (a paused host's deadlines, "delivery unknown" for a killed host's
non-idempotent requests); phase 2 may not: every request and every call of both jobs must end OK.
Both phases: exactly one outcome per request, no exclusivity violation (leasenet/checker.py, from
the producer hosts' executions and the notebook VMs' own records). The figures (upgrade duration,
p99 of the requests during it) are printed in the terminal summary."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from leasenet import checker
from tests.conftest import eventually
from tests.docker.conftest import CERTS_DIR, DOCKER_DIR, ETCD_IMAGE, FIGURES, LEASENET_IMAGE, docker, run

pytestmark = pytest.mark.docker

STACK_FILE = DOCKER_DIR / "stack.yaml"
UPGRADE = DOCKER_DIR / "swarm-upgrade.sh"
NEXT_IMAGE = "leasenet:next"  # the same tree with another version label: the "new version"
LEASENET_SERVICES = ("registry", "producer", "notebook", "consumer1", "consumer2", "consumer3")
HOSTS = {"registry": 2, "producer": 3, "notebook": 2, "consumer": 3}  # by kind (registries by id prefix)
PHASE1_REQUESTS = 3000  # traffic.toml's 100/s: 30 s
PHASE2_REQUESTS = 60_000  # more than the upgrade takes: the job is scaled down once it is over
CALL_ROUNDS = 100_000  # ditto
LEASE_TTL_S = 5  # config/cluster.toml
PAUSE_S = LEASE_TTL_S + 3


class Stack:
    """One `docker stack deploy` of stack.yaml under a unique name."""

    def __init__(self) -> None:
        self.name = "lnsw" + uuid.uuid4().hex[:6]
        self.env: dict[str, str] = {"LEASENET_ETCD_IMAGE": ETCD_IMAGE}

    def deploy(self, **env: str) -> None:
        self.env.update(env)
        run("docker", "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), self.name,
            env={**os.environ, **self.env}, timeout=180)

    def service(self, name: str) -> str:
        return f"{self.name}_{name}"

    def tasks(self, name: str) -> list[dict[str, Any]]:
        out = docker("service", "ps", "--no-trunc", "--format", "{{json .}}", self.service(name)).stdout
        return [json.loads(line) for line in out.splitlines()]

    def converged(self) -> bool:
        """Every server service runs its replicas (healthy: swarm counts a task as running only once
        its healthcheck passed) and the etcd-auth job completed."""
        out = docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}", "--filter",
                     f"label=com.docker.stack.namespace={self.name}").stdout
        for line in out.splitlines():
            name, replicas = line.split()[:2]
            running, wanted = replicas.split("/")
            if name == self.service("etcd-auth"):
                if not any(t["CurrentState"].startswith("Complete") for t in self.tasks("etcd-auth")):
                    return False
            elif running != wanted:
                return False
        return bool(out)

    def containers(self, name: str, state: str = "running") -> list[str]:
        return docker("ps", "-q", "--filter", f"status={state}", "--filter",
                      f"label=com.docker.swarm.service.name={self.service(name)}").stdout.split()

    def operator(self, *args: str, timeout: float = 60) -> str:
        """A leasenet command in a one-off container on the `ops` network, as operator/admin."""
        return docker("run", "--rm", "--network", self.service("ops"), "-v", f"{CERTS_DIR / 'operator'}:/etc/leasenet-tls:ro",
                      LEASENET_IMAGE, *args, "--tls-dir", "/etc/leasenet-tls", timeout=timeout).stdout

    def hosts(self) -> dict[str, str]:
        """Live hosts, id -> kind, through a registry's inspection API ({} while no registry answers)."""
        try:
            out = self.operator("hosts", "--registry", "registry:7000", "--json")
        except RuntimeError:
            return {}
        return {h["host_id"]: h["kind"] for h in json.loads(out)["hosts"]}

    def hosts_when(self, wanted: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        """The live hosts once they are as `wanted` (for eventually(): else an AssertionError naming them)."""
        hosts = self.hosts()
        assert wanted(hosts), f"hosts: {sorted(hosts)}"
        return hosts

    def answered(self) -> int:
        """Outcomes in the traffic job's history so far (every run's)."""
        for container in self.containers("traffic"):
            proc = docker("exec", container, "grep", "-c", '"event":"outcome"', "/history/traffic.jsonl", check=False)
            return int(proc.stdout.strip() or 0)
        return -1

    def jobs_done(self) -> bool:
        return not self.containers("traffic") and not self.containers("calls")

    def history(self, dest: Path) -> Path:
        """The `history` volume's files (both jobs', the producer hosts', the notebook VMs')."""
        tar = subprocess.run(["docker", "run", "--rm", "-v", f"{self.service('history')}:/history", "--entrypoint", "tar",
                              LEASENET_IMAGE, "-C", "/history", "-c", "."], capture_output=True, timeout=120, check=True)
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            archive.extractall(dest, filter="data")
        return dest

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.stack.namespace={self.name}"
        found = {kind: docker(*cmd, "--filter", label).stdout.split() for kind, cmd in (
            ("services", ("service", "ls", "-q")), ("containers", ("ps", "-aq")), ("networks", ("network", "ls", "-q")),
            ("secrets", ("secret", "ls", "-q")), ("configs", ("config", "ls", "-q")))}
        return {kind: ids for kind, ids in found.items() if ids}

    def remove(self) -> dict[str, list[str]]:
        """`docker stack rm`, then the volumes once their containers are gone; what is left."""
        docker("stack", "rm", self.name, timeout=120)
        try:
            eventually(lambda: not self.leftovers(), 90, 0.5, f"stack {self.name} removed")
        except AssertionError:
            pass
        label = f"label=com.docker.stack.namespace={self.name}"
        if volumes := docker("volume", "ls", "-q", "--filter", label).stdout.split():
            docker("volume", "rm", *volumes, timeout=60)
        left = self.leftovers()
        if volumes := docker("volume", "ls", "-q", "--filter", label).stdout.split():
            left["volumes"] = volumes
        return left


@pytest.fixture
def swarm(docker_engine):
    """This engine in a swarm: joined by the test only if it was in none, and left only then."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    made = state == "inactive"
    if made:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1", timeout=60)
    elif state != "active":
        pytest.skip(f"this docker engine's swarm state is {state!r}")
    try:
        yield made
    finally:
        if made:
            docker("swarm", "leave", "--force", timeout=60)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def judge(history_dir: Path, since_ns: int, until_ns: int | None = None) -> dict[str, Any]:
    """The checker over both jobs' records of requests sent in [since, until)."""
    window = lambda t: since_ns <= t and (until_ns is None or t < until_ns)  # noqa: E731
    traffic = [line for line in read_jsonl(history_dir / "traffic.jsonl") if window(int(line["sent_ns"]))]
    requests = checker.requests_from_lines(traffic)
    executions = checker.executions_from_lines(checker.read_lines(sorted(
        p for p in history_dir.glob("producer.*.jsonl"))))
    report = checker.check(checker.Recording(requests, executions, claims=[], pools=[], faults=[]))
    calls = [c for c in read_jsonl(history_dir / "calls.jsonl") if c.get("event") == "call" and window(int(c["start_ns"]))]
    vm_lines = checker.read_lines(sorted(history_dir.glob("notebook.*-vms.jsonl")))
    vm_overlaps = checker.overlapping(checker.executions_from_vm_lines(vm_lines))
    errors = Counter((r.outcome.status, r.outcome.message.split(":")[0]) for r in requests
                     if r.outcome is not None and r.outcome.status != "OK")
    call_errors = Counter((c["method"], c["code"], c["details"].split(":")[0]) for c in calls if c["code"] != "OK")
    return {"report": report, "requests": requests, "calls": calls, "errors": errors, "call_errors": call_errors,
            "vm_overlaps": vm_overlaps, "wrong": sum(1 for c in calls if c.get("state") == "wrong"),
            "latencies": [(r.outcome.done_ns - r.sent_ns) / 1e9 for r in requests if r.outcome is not None],
            "call_latencies": [(c["end_ns"] - c["start_ns"]) / 1e9 for c in calls]}


def test_swarm_stack_faults_and_a_rolling_upgrade_with_no_failed_request(swarm, leasenet_image, tmp_path):
    started = time.monotonic()
    timings: dict[str, float] = {}
    # the "new version": this tree's image with another version label (no build context needed)
    subprocess.run(["docker", "build", "-q", "-t", NEXT_IMAGE, "--label", "io.leasenet.version=next", "-"],
                   input=f"FROM {LEASENET_IMAGE}\n", text=True, capture_output=True, timeout=120, check=True)
    stack = Stack()
    seen: dict[str, Any] = {}
    try:
        stack.deploy()
        eventually(stack.converged, 300, 1.0, f"stack {stack.name} converged")
        timings["deploy to converged"] = time.monotonic() - started
        hosts = eventually(lambda: stack.hosts_when(lambda h: len(h) == sum(HOSTS.values())), 120, 1.0,
                           "every host registered")
        timings["deploy to every host registered"] = time.monotonic() - started
        kinds = Counter(k if k != "producer" else i.split(".")[0] for i, k in hosts.items())
        assert kinds == HOSTS, hosts
        seen["hosts"] = sorted(hosts)

        # -- phase 1: faults under traffic ------------------------------------------------------
        phase1 = time.monotonic_ns()
        stack.deploy(LEASENET_TRAFFIC_REPLICAS="1", LEASENET_TRAFFIC_REQUESTS=str(PHASE1_REQUESTS),
                     LEASENET_CALLS_REPLICAS="1", LEASENET_CALLS_ROUNDS="60")
        eventually(lambda: stack.answered() >= PHASE1_REQUESTS // 5, 120, 0.5, "20% of phase 1 answered")
        victim = stack.containers("producer")[0]
        docker("kill", victim)  # SIGKILL: no drain; swarm starts another task
        killed = f"producer.{victim[:12]}"
        replaced = eventually(lambda: stack.hosts_when(lambda h: killed not in h and sum(
            1 for i in h if i.startswith("producer.")) == HOSTS["producer"]), 90, 1.0,
            "the killed producer task replaced and its successor registered")
        seen["killed"] = killed
        seen["replacement"] = sorted(set(replaced) - set(hosts))
        paused = stack.containers("consumer2")[0]
        docker("pause", paused)
        time.sleep(PAUSE_S)  # the fault's length, not a synchronisation: past the lease TTL
        docker("unpause", paused)
        eventually(stack.jobs_done, 240, 1.0, "phase 1's jobs finished")
        phase1_logs = docker("service", "logs", "--tail", "1", stack.service("traffic")).stdout.strip()

        # -- phase 2: the rolling upgrade under traffic --------------------------------------
        stack.deploy(LEASENET_TRAFFIC_REPLICAS="0", LEASENET_CALLS_REPLICAS="0")
        phase2 = time.monotonic_ns()
        stack.deploy(LEASENET_TRAFFIC_REPLICAS="1", LEASENET_TRAFFIC_REQUESTS=str(PHASE2_REQUESTS),
                     LEASENET_CALLS_REPLICAS="1", LEASENET_CALLS_ROUNDS=str(CALL_ROUNDS))
        base = eventually(lambda: n if (n := stack.answered()) >= 0 else None, 120, 0.5, "phase 2's traffic started")
        eventually(lambda: stack.answered() >= base + 500, 120, 0.5, "phase 2's traffic flowing")
        upgrade_start = time.monotonic_ns()
        upgrade = run(str(UPGRADE), stack.name, NEXT_IMAGE, timeout=900)
        upgrade_end = time.monotonic_ns()
        time.sleep(3)  # traffic after the upgrade too (a few seconds of it), then stop both jobs
        docker("service", "scale", "-d", f"{stack.service('traffic')}=0", f"{stack.service('calls')}=0")
        eventually(stack.jobs_done, 120, 1.0, "phase 2's jobs stopped")
        images = {s: docker("service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                            stack.service(s)).stdout.strip() for s in LEASENET_SERVICES}
        after = stack.hosts()
        history = stack.history(tmp_path / "history")
        marks = {"phase1": phase1, "phase2": phase2, "upgrade_start": upgrade_start, "upgrade_end": upgrade_end}
        (tmp_path / "marks.json").write_text(json.dumps(marks))  # to judge the history again by hand
    finally:
        left = stack.remove()
    timings["total"] = time.monotonic() - started

    one = judge(history, phase1, phase2)
    two = judge(history, phase2)
    during = [lat for r, lat in zip(two["requests"], two["latencies"]) if upgrade_start <= r.sent_ns < upgrade_end]
    calls_during = [lat for c, lat in zip(two["calls"], two["call_latencies"]) if upgrade_start <= c["start_ns"] < upgrade_end]
    upgrade_s = (upgrade_end - upgrade_start) / 1e9
    FIGURES.append("\n".join([
        f"== docker swarm: stack {stack.name} on one node ({'swarm made by the test' if swarm else 'existing swarm'})",
        f"hosts at deploy: {', '.join(seen['hosts'])}",
        f"phase 1 (faults): {phase1_logs.split('|')[-1].strip()}; SIGKILL of {seen['killed']}, replaced by "
        f"{', '.join(seen['replacement'])}; consumer2 paused {PAUSE_S} s",
        f"  errors: {dict(one['errors']) or 'none'}; calls: {len(one['calls'])}, errors {dict(one['call_errors']) or 'none'}",
        checker.render("  checker, phase 1", one["report"]),
        f"phase 2 (rolling upgrade to {NEXT_IMAGE}): {upgrade.stdout.strip().splitlines()[-1]}",
        *(f"  {line}" for line in upgrade.stdout.strip().splitlines()[:-1]),
        f"  upgrade: {upgrade_s:.1f} s; requests sent during it: {len(during)}, p50 {percentile(during, 0.5):.3f} s, "
        f"p99 {percentile(during, 0.99):.3f} s, max {max(during, default=0):.3f} s; VIP calls during it: "
        f"{len(calls_during)}, p99 {percentile(calls_during, 0.99):.3f} s",
        f"  phase 2 requests {len(two['requests'])}, errors {dict(two['errors']) or 'none'} (idempotent "
        f"{sum(1 for r in two['requests'] if r.idempotent and r.outcome and r.outcome.status != 'OK')}); calls "
        f"{len(two['calls'])}, errors {dict(two['call_errors']) or 'none'}, Get after Put wrong {two['wrong']}",
        checker.render("  checker, phase 2", two["report"]),
        f"  hosts after: {', '.join(sorted(after))}",
        f"stack rm left: {left or 'nothing'}",
        "timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
    ]))
    print("\n" + FIGURES[-1], flush=True)

    for phase in (one, two):
        assert phase["report"].lost == 0, "requests without an outcome"
        assert phase["report"].violations == [], "\n".join(f"{v.kind}: {v.detail}" for v in phase["report"].violations)
        assert phase["vm_overlaps"] == [], "\n".join(v.detail for v in phase["vm_overlaps"])
        assert phase["wrong"] == 0, "a Get answered another lessee's value"
    assert one["requests"] and two["requests"] and two["calls"], "a job sent nothing"
    assert during and calls_during, "no request or call during the upgrade"
    assert set(images.values()) == {NEXT_IMAGE}, images
    assert not set(after) & set(hosts) - {"consumer1", "consumer2", "consumer3"}, "a host of before the upgrade is left"
    assert two["errors"] == Counter(), f"requests failed during the rolling upgrade: {two['errors']}"
    assert two["call_errors"] == Counter(), f"calls failed during the rolling upgrade: {two['call_errors']}"
    assert left == {}, f"docker stack rm left {left}"

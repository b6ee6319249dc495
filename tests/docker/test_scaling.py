"""The scalable producer hosts of docker/compose.yaml under traffic: `--scale producer=N` adds
producer hosts whose id, address and VM addresses come from their containers, and scaling down
stopped replicas drain (SIGTERM) while the consumer VMs' requests keep being answered.

    2 replicas -> traffic starts -> 4 replicas (at 25% answered) -> the first 2 stopped (at 60%),
    as a rolling replacement would: their pools must move to the new replicas

Every request must get exactly one outcome and the checker must find no violation: the stopped
hosts' leased VMs leave their pools without a request being lost or run twice, and the new
replicas serve. The pinned hosts
(producer1..3) are not started here, so every producer VM in play belongs to a scaled replica."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leasenet import checker
from tests.conftest import eventually
from tests.docker.conftest import CERTS_DIR, FIGURES, ComposeProject, docker

pytestmark = pytest.mark.docker

REQUESTS = 6000  # at traffic.toml's 100/s: ~60 s, room for both steps on a busy machine
CORE = ("etcd1", "etcd2", "etcd3", "registry1", "registry2", "consumer1", "consumer2")
SCALE_UP_AT, STOP_FIRST_AT = 0.25, 0.60  # shares of the requests answered
VMS_PER_PRODUCER = 4
CONTAINER_ID = re.compile(r"producer\.[0-9a-f]{12}")  # producer.<container id>: a replica of producer/producer


def producer_hosts(port: int) -> dict[str, str]:
    """Live producer hosts (id -> advertised address), through registry1's published port."""
    proc = subprocess.run([sys.executable, "-m", "leasenet", "hosts", "--registry", f"127.0.0.1:{port}", "--json",
                           "--tls-dir", str(CERTS_DIR / "operator")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return {h["host_id"]: h["address"] for h in json.loads(proc.stdout)["hosts"] if h["kind"] == "producer"}


def hosts_when(port: int, count: int) -> dict[str, str] | None:
    """The live producer hosts once there are `count` of them, else None (for eventually())."""
    hosts = producer_hosts(port)
    return hosts if len(hosts) == count else None


def answered(project: ComposeProject) -> int:
    proc = project.exec("traffic", "grep", "-c", '"event":"outcome"', "/history/traffic.jsonl", check=False)
    return int(proc.stdout.strip() or 0)


def test_producers_scale_up_and_down_under_traffic_with_nothing_lost(compose_project, leasenet_image, tmp_path):
    project = compose_project("lns", env={"LEASENET_TRAFFIC_REQUESTS": str(REQUESTS)})
    project.up(*CORE, timeout=240)
    project.scale("producer", 2)
    hosts = eventually(lambda: hosts_when(project.registry_port, 2), 60, 0.5, "2 producer hosts registered")
    assert all(CONTAINER_ID.fullmatch(i) and a.endswith(":7100") for i, a in hosts.items()), hosts
    assert len(set(hosts.values())) == 2, f"two replicas advertise one address: {hosts}"

    first = project.containers("producer")
    seen = {"2 replicas": hosts}
    project.compose("up", "-d", "--no-deps", "traffic")

    eventually(lambda: answered(project) >= SCALE_UP_AT * REQUESTS, 120, 0.5, f"{SCALE_UP_AT:.0%} answered")
    assert project.state("traffic")["Status"] == "running", "traffic ended before the scale-up"
    started = time.monotonic()
    project.scale("producer", 4)
    seen["scaled to 4"] = eventually(lambda: hosts_when(project.registry_port, 4), 120, 0.5, "4 hosts registered")
    print(f"scaled to 4 in {time.monotonic() - started:.1f} s", flush=True)

    eventually(lambda: answered(project) >= STOP_FIRST_AT * REQUESTS, 120, 0.5, f"{STOP_FIRST_AT:.0%} answered")
    assert project.state("traffic")["Status"] == "running", "traffic ended before the first replicas stopped"
    started = time.monotonic()
    docker("stop", "-t", "10", *first, timeout=60)  # SIGTERM: each drains, then deregisters
    seen["first 2 stopped"] = eventually(lambda: hosts_when(project.registry_port, 2), 60, 0.5,
                                         "the stopped replicas deregistered")
    assert not set(seen["first 2 stopped"]) & set(hosts), seen
    print(f"first 2 stopped in {time.monotonic() - started:.1f} s", flush=True)
    code = project.wait_exit("traffic", timeout=300)
    summary = project.logs("traffic", tail=3).strip().splitlines()[-1]
    assert code == 0, f"traffic exited {code}: {summary}"

    history_dir = project.copy_from("traffic", "/history", tmp_path / "history")
    executions = sorted(p for p in history_dir.glob("*.jsonl") if p.name != "traffic.jsonl")
    history = checker.load(requests=[history_dir / "traffic.jsonl"], executions=executions)
    report = checker.check(history)
    ran_on = {p.stem for p in executions if p.stat().st_size}
    figures = "\n".join([
        f"== docker scaling: project {project.name}, {REQUESTS} requests, producer replicas 2 -> 4 -> the first 2 stopped",
        f"traffic: {summary}",
        *(f"  {n}: {', '.join(f'{i} at {a}' for i, a in sorted(h.items()))}" for n, h in seen.items()),
        f"executions on {len(ran_on)} producer hosts: {len(history.executions)}",
        checker.render("checker (leasenet/checker.py)", report),
    ])
    FIGURES.append(figures)
    print("\n" + figures, flush=True)

    assert len(history.requests) == REQUESTS
    assert report.lost == 0, "requests without an outcome"
    assert report.violations == [], "\n".join(f"{v.kind}: {v.detail}" for v in report.violations)
    assert ran_on & set(seen["first 2 stopped"]), f"the traffic reached only {sorted(ran_on)}: no new replica served"

"""The harness: starts the processes of each phase (a LocalCluster for etcd and leasenet's own,
the bench's servers and roles besides), runs the measuring roles, gathers their typed results."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from leasenet import checker
from leasenet.bench.measure import GRANTS_HOST
from wire.tls import Kind
from leasenet.bench.plans import (
    CLUSTER, DATA_CONSUMERS, DATA_SERVICE, DATA_TARGET, DATA_VMS, FO_CONSUMERS, FO_SERVICE, FO_TARGET, FO_VMS,
    GRANT_POOL, GRANT_SERVICE, GRANT_VMS, METRICS_ON, METRICS_SUFFIX, NETWORK, RACE_HOSTS, RACE_SERVICE, RACE_TARGET, RACE_VMS, RACE_VMS_PER_HOST, Cell,
    FailoverResult, FailoverTask, GrantsResult, GrantsTask, LoadResult, LoadTask, Plan, RaceConsumerHost, RaceResult,
    RaceTask, decode, rounds_of,
)
from leasenet.bench.report import self_checks, summarize_datapath
from leasenet.bench.servers import IDENTITIES
from leasenet.cluster import ConsumerVm, LocalCluster, Proc, consumer_toml
from leasenet.etcd import etcd_binary
from mapping.config import to_toml

R = TypeVar("R")
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    etcd = ""
    try:
        out = subprocess.run([str(etcd_binary()), "--version"], capture_output=True, text=True, timeout=10).stdout
        etcd = out.splitlines()[0].split(":", 1)[1].strip() if out else ""
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return {"platform": f"{platform.system()} {platform.release()} {platform.machine()}",
            "cpu": model or platform.processor(), "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": memory_gib, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "leasenet": _version("leasenet"),
            "grpcio": _version("grpcio"), "protobuf": _version("protobuf"), "etcd3aio": _version("etcd3aio"),
            "etcd": etcd, "uvloop": _version("uvloop"),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


class Bench:
    """Starts the processes of each phase, runs the measuring roles, gathers their results."""

    def __init__(self, workdir: Path, plan: Plan, say: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.plan = plan
        self.say = say
        self.cluster = LocalCluster(workdir)  # mutual TLS everywhere, its own CA in the work dir
        self.cluster.tls(GRANTS_HOST)  # the grants role leases as this consumer host
        self.env = {"PYTHONPATH": os.pathsep.join(p for p in [PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")] if p),
                    "LEASENET_TLS_DIR": str(self.cluster.tls_dir)}  # the roles' certificates
        self.cluster.env.update(self.env)
        self.extra: list[subprocess.Popen[bytes]] = []  # harness processes besides the cluster's
        self.plain: list[LocalCluster] = []  # the plaintext overlays' own clusters (data path)
        self.self_check_runs = 0  # how many times the method's self-check was measured
        self.registry = ""
        self.metrics = ""
        self.config = self.workdir / "cluster.toml"

    # --- processes -----------------------------------------------------------------------------
    def producer(self, host_id: str, service: str, vms: int, start: str, history: bool,
                 vm_command: str = "") -> list[str]:
        """A producer host's arguments: in-process echo VMs, or processes of `vm_command`."""
        driver = ["--vm-command", vm_command] if vm_command else ["--handler", "echo"]
        args = ["producer-host", "--host-id", host_id, "--listen", "127.0.0.1:0", "--network", NETWORK,
                "--service", service, "--vms", str(vms), "--vm-address-start", start, *driver]
        return args + (["--history", str(self.workdir / f"{host_id}.history.jsonl")] if history else [])

    def consumer(self, host_id: str, vms: list[tuple[str, str]], registry: str = "") -> list[str]:
        config = self.workdir / f"{host_id}.toml"
        config.write_text(consumer_toml(ConsumerVm(NETWORK, a, t) for a, t in vms))
        return ["consumer-host", "--host-id", host_id, "--listen", "127.0.0.1:0", "--registry", registry or self.registry,
                "--config", str(config)]

    def start(self, specs: dict[str, list[str]], cluster: LocalCluster | None = None) -> dict[str, Proc]:
        """Start several leasenet processes at once (in the bench's cluster unless told); wait until
        each is serving."""
        cluster = cluster or self.cluster
        procs = {name: cluster.spawn(name, *args, wait=False) for name, args in specs.items()}
        for proc in procs.values():
            cluster.wait_ready(proc, 60)
        return procs

    def stop(self, names: Iterable[str]) -> None:
        for name in names:
            self.cluster.stop(name)

    def _popen(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "leasenet.bench", *args], stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env})
        self.extra.append(proc)
        return proc

    def start_servers(self, specs: dict[str, list[str]]) -> dict[str, tuple[str, subprocess.Popen[bytes]]]:
        """Start several of the harness's servers (bench.servers) at once, name -> [role, args...];
        returns each one's address and process once all serve."""
        started = {}
        for name, (role, *args) in specs.items():
            ready = self.workdir / f"{name}.ready"
            ready.unlink(missing_ok=True)
            started[name] = (ready, self._popen(name, role, "127.0.0.1:0", str(ready), *args))
        deadline = time.monotonic() + 60
        for name, (ready, proc) in started.items():
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} did not start (see {self.workdir / (name + '.log')})")
                time.sleep(0.02)
        return {name: (json.loads(ready.read_text())["address"], proc) for name, (ready, proc) in started.items()}

    def baselines(self, suffixes: tuple[str, ...]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        """The direct server and the bare relay, once per suffix ("-tls": over mutual TLS): their
        addresses and pids by target name."""
        mode = {s: "tls" if s else "plain" for s in suffixes}
        first = self.start_servers({**{f"direct{s}": ["direct-server", mode[s]] for s in suffixes},
                                    **{f"relay-end{s}": ["relay-end", mode[s]] for s in suffixes}})
        relays = self.start_servers({f"relay{s}": ["relay", mode[s], first[f"relay-end{s}"][0]] for s in suffixes})
        addresses, pids = {}, {}
        for s in suffixes:
            addresses.update({f"direct{s}": first[f"direct{s}"][0], f"relay{s}": relays[f"relay{s}"][0]})
            pids.update({f"direct{s}": {"server": first[f"direct{s}"][1].pid},
                         f"relay{s}": {"relay": relays[f"relay{s}"][1].pid, "relay end": first[f"relay-end{s}"][1].pid}})
        return addresses, pids

    def role(self, name: str, task: Any, result: type[R], timeout_s: float) -> R:
        """Run one measuring role in its own process; its result comes back as a JSON file."""
        task_file, result_file = self.workdir / f"{name}.task.json", self.workdir / f"{name}.result.json"
        task_file.write_text(json.dumps(asdict(task)))
        result_file.unlink(missing_ok=True)
        proc = self._popen(name, task.role, str(task_file), str(result_file))
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"the {name} step did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not result_file.exists():
            tail = (self.workdir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"the {name} step failed: {tail[0] if tail else 'exit ' + str(proc.returncode)}")
        return decode(result, json.loads(result_file.read_text()))

    def close_phase(self) -> None:
        """Stop the harness's processes and the plaintext clusters started so far (the next phase
        runs on a machine they no longer load)."""
        for proc in self.extra:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for plain in self.plain:
            plain.close()
        self.extra, self.plain = [], []

    def close(self) -> None:
        self.close_phase()
        self.cluster.close()

    # --- phases --------------------------------------------------------------------------------
    def base(self) -> None:
        self.say(f"starting etcd and a registry in {self.workdir}")
        # a reused --workdir: a fresh etcd, and no history of an earlier run in the double-claim check
        for stale in [*self.workdir.glob("etcd[0-9]*"), *self.workdir.glob("*.history.jsonl")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            elif stale.suffix == ".jsonl":
                stale.unlink(missing_ok=True)
        self.cluster.start_etcd()
        assert self.cluster.etcd is not None
        self.metrics = self.cluster.etcd.members[0].metrics_url  # plaintext: no certificate needed
        self.config.write_text(to_toml(CLUSTER))
        self.registry = self.start({"registry": ["registry", "--listen", "127.0.0.1:0", "--cluster-config",
                                                 str(self.config)]})["registry"].address
        # the grants role leases as this consumer host: its pools hang on that host's liveness lease
        self.cluster.start_presence(Kind.CONSUMER, GRANTS_HOST.id)

    def load_task(self, addresses: dict[str, str], cells: list[Cell], pids: dict[str, dict[str, int]],
                  metrics: str = "") -> LoadTask:
        return LoadTask([[NETWORK, a, t, DATA_TARGET] for a, t in DATA_CONSUMERS], addresses, metrics or self.metrics,
                        cells, pids)

    def overlay(self, cluster: LocalCluster, registry: str, suffix: str) -> dict[str, Proc]:
        """A producer host with 64 VMs and a consumer host in `cluster`, spawned (not yet serving)."""
        p_name, c_name = f"p-data{suffix}", f"c-data{suffix}"
        return {p_name: cluster.spawn(p_name, *self.producer(p_name, DATA_SERVICE, DATA_VMS, "10.7.10.1", history=False),
                                      wait=False),
                c_name: cluster.spawn(c_name, *self.consumer(c_name, DATA_CONSUMERS, registry), wait=False)}

    def plaintext_cluster(self, name: str = "plain", metrics: bool = False,
                          config: Path | None = None) -> tuple[LocalCluster, str]:
        """A plaintext overlay's own cluster (--insecure: etcd, a registry): the bench's cluster is
        mutual TLS everywhere, and one process is either. `metrics`: every process serves /metrics;
        `config`: its services (default: the bench's cluster.toml)."""
        plain = LocalCluster(self.workdir / name, insecure=True, env={"PYTHONPATH": self.env["PYTHONPATH"]},
                             metrics=metrics)
        self.plain.append(plain)
        plain.start_etcd()
        registry = plain.spawn("registry", "registry", "--listen", "127.0.0.1:0", "--cluster-config",
                               str(config or self.config), timeout_s=60)
        return plain, registry.address

    def datapath(self) -> LoadResult:
        p = self.plan
        self.say("data path: a producer host (64 VMs), a consumer host, the direct server and the bare relay"
                 + (", each also over mutual TLS" if p.tls else ""))
        plain, registry = self.plaintext_cluster()
        suffixes = ("", "-tls") if p.tls else ("",)
        for identity in IDENTITIES if p.tls else ():
            self.cluster.tls(identity)  # the TLS baselines' certificates, from the cluster's CA
        where = {"": (plain, registry), "-tls": (self.cluster, self.registry)}  # cluster, registry
        if any(METRICS_ON in spec.targets for spec in p.cells):  # the same overlay again, serving /metrics
            where[METRICS_SUFFIX] = self.plaintext_cluster("metrics", metrics=True)
        hosts = {s: self.overlay(*where[s], s) for s in where if s != "-tls" or p.tls}
        started = len(self.extra)
        addresses, pids = self.baselines(suffixes)
        for s, procs in hosts.items():
            for proc in procs.values():
                where[s][0].wait_ready(proc, 60)
            addresses[f"overlay{s}"] = procs[f"c-data{s}"].address
            pids[f"overlay{s}"] = {"consumer host": procs[f"c-data{s}"].process.pid,  # type: ignore[union-attr]
                                   "producer host": procs[f"p-data{s}"].process.pid}  # type: ignore[union-attr]
        addresses["overlay-again"], pids["overlay-again"] = addresses["overlay"], pids["overlay"]
        assert plain.etcd is not None
        metrics = plain.etcd.members[0].metrics_url  # the plaintext overlay's etcd: what its traffic costs
        targets = sorted({t for spec in p.cells for t in spec.targets})
        # lease every pool and warm every path up (not measured)
        warmup = [Cell(t, "unary", 100, 64, 0.0, 0.5) for t in targets]
        self.role("warmup", self.load_task(addresses, warmup, pids, metrics), LoadResult, 120)
        cells = [cell for spec in p.cells for cell in rounds_of(spec, p)]
        cells.append(Cell("idle", duration_s=p.idle_s))
        self.say(f"data path: {len(p.cells)} cells, {len(cells) - 1} slices of {p.slice_warmup_s + p.slice_s:.2f} s "
                 f"(targets alternating, {p.rounds} rounds per cell)")
        result = self.role("load", self.load_task(addresses, cells, pids, metrics), LoadResult,
                           120 + len(cells) * (p.slice_warmup_s + p.slice_s + 2))
        self.self_check_runs = 1
        if p.quick and not all(c["pass"] for c in self_checks(summarize_datapath(result))):
            # A burst from a neighbour on this shared machine can tilt every pair of --quick's few
            # short slices the same way; an unfair method tilts them again. Measured once more.
            again = [cell for cell in cells if cell.check]
            self.say("data path: the method's self-check did not hold; measuring it once more")
            second = self.role("load", self.load_task(addresses, again, pids, metrics), LoadResult,
                               120 + len(again) * (p.slice_warmup_s + p.slice_s + 2))
            result = LoadResult([c for c in result.cells if not c.check] + second.cells, result.event_loop)
            self.self_check_runs = 2
        for proc in self.extra[started:]:
            proc.terminate()  # all at once, then wait
        for proc in self.extra[started:]:
            proc.wait(10)
        self.stop(n for n in ("p-data-tls", "c-data-tls") if n in self.cluster.procs)
        for cluster in self.plain:
            cluster.close()
        self.plain = []
        return result

    def leasing(self) -> tuple[list[GrantsResult], list[RaceResult]]:
        self.say(f"leasing: starting 2 producer hosts and {RACE_HOSTS} consumer hosts")
        race_vms = [[(f"10.7.1.{h * RACE_VMS_PER_HOST + i + 1}", f"race-token-{h}-{i}")
                     for i in range(RACE_VMS_PER_HOST)] for h in range(RACE_HOSTS)]
        specs = {"p-grant": self.producer("p-grant", GRANT_SERVICE, GRANT_VMS, "10.7.11.1", history=False),
                 "p-scarce": self.producer("p-scarce", RACE_SERVICE, RACE_VMS, "10.7.12.1", history=True)}
        specs.update({f"c-race{h + 1}": self.consumer(f"c-race{h + 1}", vms) for h, vms in enumerate(race_vms)})
        procs = self.start(specs)
        grants, races = [], []
        p = self.plan
        for run in range(p.runs):
            self.say(f"leasing run {run + 1}/{p.runs}: {p.grants} grants of a pool of {GRANT_POOL}, "
                     f"then {RACE_HOSTS} consumer hosts racing for {p.race_s:.1f} s")
            grants.append(self.role(f"grants-{run + 1}", GrantsTask(self.registry, GRANT_SERVICE, p.grants, 3,
                                                                    run * (p.grants + 3)), GrantsResult, 120))
            hosts = [RaceConsumerHost(procs[f"c-race{h + 1}"].address, [list(vm) for vm in vms])
                     for h, vms in enumerate(race_vms)]
            races.append(self.role(f"race-{run + 1}", RaceTask(self.registry, RACE_TARGET, p.race_s, hosts),
                                   RaceResult, 120))
        self.stop(procs)
        return grants, races

    def failover(self) -> list[FailoverResult]:
        self.say("failover: starting 2 producer hosts and a consumer host")
        vms = [(f"10.7.2.{i + 1}", f"fo-token-{i}") for i in range(FO_CONSUMERS)]
        procs = self.start({"p-fo1": self.producer("p-fo1", FO_SERVICE, FO_VMS, "10.7.13.1", history=True),
                            "p-fo2": self.producer("p-fo2", FO_SERVICE, FO_VMS, "10.7.14.1", history=True),
                            "c-fo": self.consumer("c-fo", vms)})
        runs = []
        for run in range(self.plan.runs):
            self.say(f"failover run {run + 1}/{self.plan.runs}: traffic, SIGKILL of the busiest producer host")
            victims = {name: self.cluster.procs[name].process.pid for name in ("p-fo1", "p-fo2")}  # type: ignore[union-attr]
            task = FailoverTask(procs["c-fo"].address, self.registry, FO_SERVICE, FO_TARGET, [list(vm) for vm in vms],
                                2, 100, victims, self.plan.failover_before_s, self.plan.failover_after_s)
            result = self.role(f"failover-{run + 1}", task, FailoverResult, 120)
            runs.append(result)
            self.cluster.procs[result.victim].process.wait(10)  # type: ignore[union-attr]
            if run + 1 < self.plan.runs:
                self.cluster.restart(result.victim, 60)
        self.stop(["c-fo", "p-fo1", "p-fo2"])
        return runs

    def double_claims(self) -> list[str]:
        """What the producer VMs' execution histories show: overlapping runs, a claim shared."""
        recorded = checker.load(executions=sorted(self.workdir.glob("*.history.jsonl")))
        return [v.detail for v in checker.check(recorded).violations]

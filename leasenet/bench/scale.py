"""`leasenet bench --scale`: does the cost of leasing and of the request path stay flat as the fleet
grows? (issue 12 item 6)

On the embedded etcd with mutual TLS: two registries, four consumer hosts (each listing both
registries, in opposite orders), ten producer hosts of 10 VMs, then ten producer hosts of 1,000 VMs
each in their place, alternating three times (each ratio is the median of the rounds' ratios, so
that the machine's load moving between two measurements is not read as a cost). It reports, with the machine: how long 10,000 VMs take to register; how long
a replica's snapshot load takes and each process's RSS; grant p50/p99 for a pool of 4 at 100 and at
10,000 VMs; the request path's p50 at C=1 at both sizes; with 2,000 pools held, the etcd requests per
second spent keeping them alive; grants/s through both registries uncontended (churn: two services,
one owned by each registry, each worker at its service's owner as a consumer host would be, with the
big fleet and its pools in every replica) and contended (a fleet smaller than the demand: grants and refusals counted apart, double
claims from the lease events); etcd's db size across 20,000 grant/release cycles in four quarters
(with compaction it must level off). `--quick` runs the same steps on a small cluster (CI smoke).

The roles here run as `python -m leasenet.bench ROLE TASK RESULT` like the other sections'."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc
import grpc.aio

from leasenet.bench.harness import Bench, machine
from leasenet.bench.measure import (
    GRANTS_HOST, CpuMeter, cluster_channel, cluster_tls, etcd_counts, ms, percentile, ratio,
)
from leasenet.bench.plans import (
    NETWORK, VNI, Cell, GrantsResult, GrantsTask, LoadResult, LoadTask, RaceConsumerHost, make_plan,
)
from leasenet.checker import ClaimLog, claims_from_lines, double_leases
from leasenet.cluster import ETCD
from leasenet.demo import watch_leases
from leasenet.inspection import table
from leasenet.procstat import rss_mib
from mapping import keys
from mapping.config import ClusterConfig, to_toml
from mapping.model import (
    Claim, Host, HostId, HostKind, LeaseId, LeasePolicy, Network, ProducerVm, Service, parse_target, vm_id,
)
from mapping.ownership import owner
from mapping.replica import Replica
from mapping.store.etcd import EtcdStore
from mapping.store.memory import MemoryStore
from registry.leasing import LeasingAgent
from wire.tls import Kind, TlsFiles
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

SCALE_SERVICE, SCALE_TARGET, SCALE_POOL = "scale", "10.7.255.10:7", 4
SCARCE_SERVICE, SCARCE_TARGET, SCARCE_POOL, SCARCE_VMS = "scale-scarce", "10.7.255.11:7", 2, 12
# the churn's services: one owned by each registry (rendezvous hashing over r1, r2), each on a producer
# host of its own, so that both leasing agents grant at once as consumer hosts would reach them
CHURN_SERVICES = tuple(next(f"churn-{n}" for n in range(100) if owner(f"churn-{n}", ("r1", "r2")) == r)
                       for r in ("r1", "r2"))
CHURN_VMS = 200  # per churn service: its workers hold at most one pool of SCALE_POOL each
SCALE_CLUSTER = ClusterConfig([Network(NETWORK, VNI)], [
    Service(SCALE_SERVICE, NETWORK, *parse_target(SCALE_TARGET),
            # a TTL of 30 s: 2,000 pools renewed one by one every TTL/3 (this branch) at 10 s overran a loaded
            # 2-core machine
            LeasePolicy(min_pool=SCALE_POOL, max_pool=SCALE_POOL, lease_ttl_s=30, idle_release_s=600)),
    Service(SCARCE_SERVICE, NETWORK, *parse_target(SCARCE_TARGET),
            LeasePolicy(min_pool=SCARCE_POOL, max_pool=SCARCE_POOL, lease_ttl_s=5, idle_release_s=600)),
    *(Service(name, NETWORK, *parse_target(f"10.7.255.{20 + i}:7"),
              LeasePolicy(min_pool=SCALE_POOL, max_pool=SCALE_POOL, lease_ttl_s=30, idle_release_s=600))
      for i, name in enumerate(CHURN_SERVICES)),
])
PROBE = ("10.7.9.1", "scale-probe-token")  # the consumer VM whose requests time the request path


@dataclass(frozen=True, slots=True)
class ScalePlan:
    quick: bool
    small_vms: int  # the fleet of the first measurement
    producer_hosts: int
    vms_per_host: int  # the big fleet: producer_hosts x vms_per_host
    consumer_hosts: int
    pools: int  # held by the consumer hosts during the big-fleet measurements
    grants: int  # grant latency samples per fleet size
    probe_s: float  # request path at C=1: measured seconds per fleet size
    idle_s: float  # the keep-alive window
    churn_cycles: int  # grant/release cycles, in four quarters
    workers: int  # grant-rate workers per lane (churn: per service at its owner; contended: per registry)
    contended_s: float
    churn_quarter_s: float  # each quarter of the churn ends after this long even if its cycles are not done
    fleet_rounds: int = 3  # small and big fleets alternate this many times: each ratio is the median of the rounds'

    @property
    def big_vms(self) -> int:
        return self.producer_hosts * self.vms_per_host


def scale_plan(quick: bool) -> ScalePlan:
    if quick:
        return ScalePlan(True, 20, 2, 100, 2, 20, 10, 0.3, 1.0, 100, 4, 1.0, 30.0, fleet_rounds=2)
    return ScalePlan(False, 100, 10, 1000, 4, 2000, 200, 3.0, 10.0, 20000, 16, 5.0, 150.0)


# --- roles ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HoldTask:
    role: ClassVar[str] = "hold"
    consumers: list[RaceConsumerHost]  # each consumer VM sends once: its pool is leased and kept
    target: str
    concurrency: int


@dataclass(frozen=True, slots=True)
class HoldResult:
    held: int
    errors: dict[str, int]
    elapsed_s: float
    event_loop: str = "asyncio"


async def hold(task: HoldTask) -> HoldResult:
    """Lease one pool per consumer VM through its consumer host (a first request leases it)."""
    errors: Counter[str] = Counter()
    held = 0
    gate = asyncio.Semaphore(task.concurrency)
    channels = [cluster_channel(c.address, Kind.CONSUMER) for c in task.consumers]

    async def one(stub: Any, address: str, token: str) -> None:
        nonlocal held
        async with gate:
            try:
                await stub.Send(cpb.SendRequest(network=NETWORK, src=address, token=token, target=task.target,
                                                payload=b"hold"), timeout=30)
                held += 1
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1

    started = time.monotonic()
    await asyncio.gather(*(one(cpb_grpc.ConsumerHostStub(ch), a, t)
                           for ch, c in zip(channels, task.consumers) for a, t in c.vms))
    for ch in channels:
        await ch.close()
    return HoldResult(held, dict(errors), round(time.monotonic() - started, 2))


@dataclass(frozen=True, slots=True)
class RateTask:
    role: ClassVar[str] = "grant-rate"
    lanes: list[list[str]]  # [service, registry address]: where each group of workers leases
    workers: int  # per lane, each a consumer VM of its own
    first: int  # numbers the consumer VMs, unique across runs
    cycles: int  # stop after this many grants in all (0: only the duration counts)
    duration_s: float
    watch: bool  # follow the lease events for double claims


@dataclass(frozen=True, slots=True)
class RateResult:
    grants: int
    refusals: int
    errors: dict[str, int]
    elapsed_s: float
    grants_per_s: float
    refusals_per_s: float
    violations: list[str] = field(default_factory=list)
    event_loop: str = "asyncio"


async def grant_rate(task: RateTask) -> RateResult:
    """Workers on every registry lease a pool and release it, again and again, as one consumer host
    would: grants and refusals (RESOURCE_EXHAUSTED) counted apart."""
    claims, synced = ClaimLog(), asyncio.Event()
    watcher = None
    if task.watch:
        watcher = asyncio.create_task(watch_leases(task.lanes[0][1], claims, synced, cluster_tls()))
        await asyncio.wait_for(synced.wait(), 30)
    grants = refusals = 0
    errors: Counter[str] = Counter()
    end = time.monotonic() + task.duration_s
    channels = [cluster_channel(registry, Kind.REGISTRY, GRANTS_HOST) for _, registry in task.lanes]

    async def worker(stub: Any, service: str, n: int) -> None:
        nonlocal grants, refusals
        rng = random.Random(n)
        consumer = f"10.{60 + n // 62500}.{n // 250 % 250}.{1 + n % 250}"
        while time.monotonic() < end and not (task.cycles and grants >= task.cycles):
            try:
                lease = await stub.RequestLease(rpb.RequestLeaseRequest(
                    service=service, consumer_network=NETWORK, consumer_vm=consumer,
                    consumer_host=GRANTS_HOST.id), timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refusals += 1
                else:
                    errors[exc.code().name] += 1
                await asyncio.sleep(rng.uniform(0.001, 0.005))
                continue
            grants += 1
            try:
                await stub.ReleaseLease(rpb.LeaseRef(lease_id=lease.lease_id), timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors[f"release {exc.code().name}"] += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(rpb_grpc.LeasingStub(ch), service, task.first + lane * task.workers + w)
                           for lane, (ch, (service, _)) in enumerate(zip(channels, task.lanes))
                           for w in range(task.workers)))
    elapsed = time.monotonic() - started
    violations: list[str] = []
    if watcher is not None:
        await asyncio.sleep(0.5)  # the last lease events
        watcher.cancel()
        violations = [v.detail for v in double_leases(claims_from_lines(claims.lines))]
    for ch in channels:
        await ch.close()
    return RateResult(grants, refusals, dict(errors), round(elapsed, 2), round(grants / elapsed, 1),
                      round(refusals / elapsed, 1), violations)


SCALE_ROLES: dict[str, tuple[type[Any], Callable[[Any], Awaitable[Any]]]] = {
    HoldTask.role: (HoldTask, hold), RateTask.role: (RateTask, grant_rate)}


# --- meters --------------------------------------------------------------------------------------
def etcd_gauges(metrics_url: str, *names: str) -> dict[str, float]:
    """Some of etcd's own gauges (e.g. etcd_mvcc_db_total_size_in_bytes) from its /metrics."""
    found: dict[str, float] = {}
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in names:
                found[name] = float(value)
    return found


def choice_agent(vms: int, hosts: int, claimed: float = 0.8) -> LeasingAgent:
    """A leasing agent over a replica state of `vms` VMs on `hosts` hosts, a share `claimed` leased."""
    replica = Replica(MemoryStore())
    state = replica.state
    service = SCALE_CLUSTER.services[0]
    records: list[Any] = [service, *(Host(HostId(f"p{h}"), HostKind.PRODUCER, f"127.0.0.1:{h + 1}")
                                     for h in range(hosts))]
    for n in range(vms):
        vm = ProducerVm(NETWORK, f"10.{20 + n // 62500}.{n // 250 % 250}.{1 + n % 250}", HostId(f"p{n % hosts}"),
                        service.name, revision=n + 1)
        records.append(vm)
        if n < vms * claimed:
            records.append(Claim(vm.vm_id, LeaseId(1 + n // SCALE_POOL), service.name, vm_id(NETWORK, "10.9.0.1"),
                                 HostId("c1"), vm.revision, revision=n + 1, host_id=vm.host_id))
    for record in records:
        state.apply(keys.key_of(record), record)
    return LeasingAgent(replica.store, replica, rng=random.Random(1))


def choice_cost_us(small_vms: int, big_vms: int, hosts: int, rounds: int = 5, choices: int = 2000) -> dict[str, Any]:
    """What a grant computes before its etcd transaction, in this process: the registry's choice of a
    pool of 4 over the small and the big replica state, microseconds per choice, timed in alternating
    rounds (the ratio is the median of the rounds' ratios, as everywhere in the bench)."""
    service = SCALE_CLUSTER.services[0]
    agents = {"small": choice_agent(small_vms, hosts), "big": choice_agent(big_vms, hosts)}
    times: dict[str, list[float]] = {"small": [], "big": []}
    for _ in range(rounds):
        for size, agent in agents.items():
            t0 = time.perf_counter()
            for _ in range(choices):
                agent.choose(service, SCALE_POOL, "bench", frozenset())
            times[size].append((time.perf_counter() - t0) / choices * 1e6)
    ratios = [ratio(b, a) for a, b in zip(times["small"], times["big"])]
    return {"small_us": round(statistics.median(times["small"]), 1), "big_us": round(statistics.median(times["big"]), 1),
            "ratio": median_of(ratios), "ratios": ratios}


# --- the harness ---------------------------------------------------------------------------------
class ScaleBench:
    def __init__(self, workdir: Path, plan: ScalePlan, say: Callable[[str], None]) -> None:
        self.plan = plan
        self.say = say
        self.bench = Bench(workdir, make_plan(True, 1, tls=False), say)  # its data-path plan goes unused
        self.cluster = self.bench.cluster
        self.registries: list[str] = []
        self.fleet_hosts: list[str] = []  # the producer hosts of the small or big fleet now running
        self.consumers: dict[str, list[tuple[str, str]]] = {}
        self.metrics = ""

    def close(self) -> None:
        self.bench.close()

    def start(self) -> None:
        p, b = self.plan, self.bench
        self.say(f"scale: etcd, 2 registries, {p.consumer_hosts} consumer hosts, {p.producer_hosts} producer hosts "
                 f"of {p.small_vms} VMs in all")
        self.cluster.start_etcd()
        assert self.cluster.etcd is not None
        self.metrics = self.cluster.etcd.members[0].metrics_url
        b.config.write_text(to_toml(SCALE_CLUSTER))
        regs = b.start({f"r{i}": ["registry", "--host-id", f"r{i}", "--listen", "127.0.0.1:0", "--cluster-config",
                                  str(b.config)] for i in (1, 2)})
        self.registries = [regs["r1"].address, regs["r2"].address]
        self.cluster.start_presence(Kind.CONSUMER, GRANTS_HOST.id)  # the churn's pools hang on its lease
        per_host = p.pools // p.consumer_hosts
        for h in range(p.consumer_hosts):
            vms = [(f"10.{40 + h}.{j // 250}.{1 + j % 250}", f"scale-{h}-{j}") for j in range(per_host)]
            self.consumers[f"c{h + 1}"] = vms
        specs = {name: b.consumer(name, vms + ([PROBE] if name == "c1" else []),
                                  ",".join(self.registries[::1 if h % 2 == 0 else -1]))
                 for h, (name, vms) in enumerate(self.consumers.items())}
        specs |= self.fleet_specs("small", 0)
        specs["p-scarce"] = b.producer("p-scarce", SCARCE_SERVICE, SCARCE_VMS, "10.19.0.1", history=False)
        for i, name in enumerate(CHURN_SERVICES):
            specs[f"p-{name}"] = b.producer(f"p-{name}", name, CHURN_VMS, f"10.{17 - i}.0.1", history=False)
        b.start(specs)

    def fleet_specs(self, size: str, round_: int) -> dict[str, Any]:
        """The producer hosts of a fleet: `small` (small_vms in all) or `big` (vms_per_host each), as many
        hosts at both sizes, so that the two differ in VMs alone and not in processes sharing the cores.
        Fresh host ids each round; the last big fleet is p1..pN."""
        p, b = self.plan, self.bench
        last = round_ == p.fleet_rounds - 1
        if size == "small":
            names = [f"s{round_}-{i + 1}" for i in range(p.producer_hosts)]
            each, starts = p.small_vms // p.producer_hosts, [f"10.20.{i}.1" for i in range(p.producer_hosts)]
        else:
            names = [f"p{i + 1}" if last else f"b{round_}-{i + 1}" for i in range(p.producer_hosts)]
            each, starts = p.vms_per_host, [f"10.{20 + i + 1}.0.1" for i in range(p.producer_hosts)]
        self.fleet_hosts = names
        return {name: b.producer(name, SCALE_SERVICE, each, start, history=False) for name, start in zip(names, starts)}

    def fleet(self, label: str, first: int) -> dict[str, Any]:
        """Grant latency (pool of 4) and the request path's p50 at C=1 with the fleet as it is."""
        p, b = self.plan, self.bench
        grants = b.role(f"grants-{label}", GrantsTask(self.registries[0], SCALE_SERVICE, p.grants, 5, first),
                        GrantsResult, 300)
        probe = LoadTask([[NETWORK, *PROBE, SCALE_TARGET]], {"overlay-tls": self.cluster.procs["c1"].address},
                         self.metrics, [Cell("overlay-tls", "unary", 100, 1, 0.3, p.probe_s)])
        for attempt in range(3):  # a first request may wait for its pool's lease; then measure again
            cell = b.role(f"probe-{label}-{attempt}", probe, LoadResult, 120).cells[0]
            if cell.p50_ms is not None and not cell.errors:
                break
        return {"vms": self.vms(), "grant_p50_ms": grants.p50_ms, "grant_p99_ms": grants.p99_ms,
                "grants": grants.grants, "grant_failures": grants.failures, "request_p50_ms": cell.p50_ms,
                "request_p99_ms": cell.p99_ms, "requests": cell.answered, "request_errors": cell.errors}

    def vms(self) -> int:
        return asyncio.run(self._service_vms())[0]

    async def _service_vms(self) -> tuple[int, int]:
        async with self.cluster.channel(self.registries[0], Kind.REGISTRY) as channel:
            s = await rpb_grpc.InspectionStub(channel).GetService(rpb.GetRequest(id=SCALE_SERVICE), timeout=10)
            return s.vms, s.free_vms

    def switch_fleet(self, size: str, round_: int) -> float:
        """The fleet's producer hosts leave and the `size` fleet of `round_` registers: seconds until a
        registry sees every VM of it (big: the registration of big_vms VMs)."""
        p, b = self.plan, self.bench
        asyncio.run(self._detach_probe())  # its pool is on the leaving fleet: lease it anew on the next one
        b.stop(self.fleet_hosts)
        want = p.big_vms if size == "big" else p.small_vms
        self.say(f"scale: registering {want} VMs on {p.producer_hosts} producer hosts (round {round_ + 1})")
        started = time.monotonic()
        b.start(self.fleet_specs(size, round_))
        deadline = started + 600
        while self.vms() != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the registry saw {self.vms()} of {want} VMs after 600 s")
            time.sleep(0.1)
        return round(time.monotonic() - started, 2)

    async def _detach_probe(self) -> None:
        async with self.cluster.channel(self.cluster.procs["c1"].address, Kind.CONSUMER) as channel:
            await cpb_grpc.ConsumerHostStub(channel).Detach(
                cpb.DetachRequest(network=NETWORK, address=PROBE[0], token=PROBE[1]), timeout=10)

    def snapshot(self, times: int = 3) -> dict[str, Any]:
        """What every host does at start: fetch the keyspace and build its indexed state."""
        async def load_once() -> tuple[float, int]:
            assert self.cluster.tls_dir is not None
            store = await EtcdStore(self.cluster.etcd_endpoints, timeout_s=30,
                                    tls=TlsFiles.in_dir(self.cluster.tls_dir, ETCD).load()).connect()
            try:
                t0 = time.perf_counter()
                snap = await store.snapshot(keys.ROOT)
                Replica(store).load(snap)
                return time.perf_counter() - t0, len(snap.items)
            finally:
                await store.close()
        runs = [asyncio.run(load_once()) for _ in range(times)]
        return {"keys": runs[-1][1], "p50_ms": ms(percentile([t for t, _ in runs], 50)),
                "max_ms": ms(max(t for t, _ in runs))}

    def hold(self) -> dict[str, Any]:
        p, b = self.plan, self.bench
        self.say(f"scale: {p.pools} pools of {SCALE_POOL} leased through {p.consumer_hosts} consumer hosts")
        hosts = [RaceConsumerHost(self.cluster.procs[n].address, [list(v) for v in vms])
                 for n, vms in self.consumers.items()]
        result = b.role("hold", HoldTask(hosts, SCALE_TARGET, 16), HoldResult, 900)
        return asdict(result)

    def keep_alive(self) -> dict[str, Any]:
        """etcd's received messages during an idle window with the pools held: their upkeep."""
        before, t0 = etcd_counts(self.metrics), time.monotonic()
        time.sleep(self.plan.idle_s)  # a measuring window, not synchronisation
        after, elapsed = etcd_counts(self.metrics), time.monotonic() - t0
        per_method = {m: round((after[m] - before[m]) / elapsed, 1) for m in after if after[m] > before[m]}
        return {"window_s": round(elapsed, 2), "requests_per_s": round(sum(per_method.values()), 1),
                "per_method": per_method}

    def rss(self) -> dict[str, float | None]:
        found = {name: rss_mib(proc.process.pid) for name, proc in self.cluster.procs.items()
                 if proc.alive and proc.process is not None}
        assert self.cluster.etcd is not None
        etcd = self.cluster.etcd.members[0].process
        return {**found, "etcd": rss_mib(etcd.pid) if etcd is not None else None}

    def cpu_meter(self) -> CpuMeter:
        """The CPU of every leasenet process and etcd (the load generator not included)."""
        pids = {name: proc.process.pid for name, proc in self.cluster.procs.items()
                if proc.alive and proc.process is not None}
        assert self.cluster.etcd is not None and self.cluster.etcd.members[0].process is not None
        pids["etcd"] = self.cluster.etcd.members[0].process.pid
        return CpuMeter(pids)

    def rate(self, name: str, lanes: list[list[str]], first: int, cycles: int, duration_s: float, watch: bool,
             workers: int) -> RateResult:
        return self.bench.role(name, RateTask(lanes, workers, first, cycles, duration_s, watch),
                               RateResult, duration_s + 120)

    def owner_lanes(self) -> list[list[str]]:
        """Each churn service at the registry owning it, as a consumer host would reach it."""
        by_id = dict(zip(("r1", "r2"), self.registries))
        return [[service, by_id[owner(service, by_id) or "r1"]] for service in CHURN_SERVICES]

    def churn(self) -> dict[str, Any]:
        """grant/release cycles in four quarters, etcd's db size after each: uncontended grants/s."""
        p = self.plan
        db = "etcd_mvcc_db_total_size_in_bytes"
        use = "etcd_mvcc_db_total_size_in_use_in_bytes"
        sizes = [etcd_gauges(self.metrics, db, use)]
        quarters = []
        meter = self.cpu_meter()
        meter.begin()
        for q in range(4):
            self.say(f"scale: churn quarter {q + 1}/4, {p.churn_cycles // 4} grant/release cycles")
            quarters.append(self.rate(f"churn-{q + 1}", self.owner_lanes(), 100_000 + q * 1000, p.churn_cycles // 4,
                                      p.churn_quarter_s, False, p.workers))
            sizes.append(etcd_gauges(self.metrics, db, use))
        meter.end()
        grants = sum(r.grants for r in quarters)
        elapsed = sum(r.elapsed_s for r in quarters)
        return {"cycles": grants, "grants_per_s": round(grants / elapsed, 1) if elapsed else None,
                "cpu_ms_per_cycle": cpu_per_cycle(meter.used, grants),
                "refusals": sum(r.refusals for r in quarters),
                "errors": dict(sum((Counter(r.errors) for r in quarters), Counter())),
                "db_size_mib": [round(s.get(db, 0) / 2**20, 2) for s in sizes],
                "db_in_use_mib": [round(s.get(use, 0) / 2**20, 2) for s in sizes]}


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def rounds_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One fleet size over its rounds: the median of each latency, errors and counts summed."""
    summary: dict[str, Any] = {"vms": rounds[-1]["vms"], "rounds": rounds}
    for key in ("grant_p50_ms", "grant_p99_ms", "request_p50_ms", "request_p99_ms"):
        summary[key] = median_of([r[key] for r in rounds])
    for key in ("grants", "requests"):
        summary[key] = sum(r[key] for r in rounds)
    for key in ("grant_failures", "request_errors"):
        summary[key] = dict(sum((Counter(r[key]) for r in rounds), Counter()))
    return summary


def cpu_per_cycle(used: dict[str, float], cycles: int) -> dict[str, float]:
    """Where a grant/release cycle's CPU goes, in ms: etcd, the registries together, and one consumer
    host and one producer host on average (every host applies every cycle's events to its replica)."""
    kinds: dict[str, list[float]] = {"etcd": [], "registries": [], "a consumer host": [], "a producer host": []}
    for name, seconds in used.items():
        kind = ("etcd" if name == "etcd" else "registries" if name in ("r1", "r2")
                else "a consumer host" if name.startswith("c") else "a producer host")
        kinds[kind].append(seconds)
    per = {kind: (sum(v) if kind in ("etcd", "registries") else sum(v) / len(v)) for kind, v in kinds.items() if v}
    return {kind: round(seconds * 1000 / cycles, 2) for kind, seconds in per.items()} if cycles else {}


def run_scale(workdir: Path, quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    plan = scale_plan(quick)
    s = ScaleBench(workdir, plan, say)
    started = time.monotonic()
    try:
        info = machine()
        # over as many hosts at both sizes: the cost may grow with hosts, it must not with VMs
        choice = choice_cost_us(plan.small_vms, plan.big_vms, plan.producer_hosts)
        s.start()
        # small and big alternate, so that a change of the machine's load between the two
        # measurements shows up as spread between rounds instead of as a ratio
        smalls, bigs, registrations = [], [], []
        for round_ in range(plan.fleet_rounds):
            if round_:
                s.switch_fleet("small", round_)
            say(f"scale: grants and the request path with {plan.small_vms} VMs (round {round_ + 1})")
            smalls.append(s.fleet("small", 4000 * round_))
            registrations.append(s.switch_fleet("big", round_))
            say(f"scale: grants and the request path with {plan.big_vms} VMs (round {round_ + 1})")
            bigs.append(s.fleet("big", 4000 * round_ + 2000))
        small, big = rounds_summary(smalls), rounds_summary(bigs)
        held = s.hold()
        snapshot = s.snapshot()
        say(f"scale: grants and the request path with {plan.big_vms} VMs and {held['held']} pools held")
        loaded = s.fleet("big-with-pools", 30_000)
        keep_alive = s.keep_alive()
        rss = s.rss()
        say(f"scale: contended grants for {SCARCE_VMS} VMs from both registries for {plan.contended_s:.0f} s")
        # both registries asked for the one scarce service: its owner grants, the other forwards or races it
        contended = s.rate("contended", [[SCARCE_SERVICE, r] for r in s.registries], 200_000, 0, plan.contended_s,
                           True, plan.workers)
        churn = s.churn()
    finally:
        s.close()
    grant_ratios = [ratio(b["grant_p50_ms"], a["grant_p50_ms"]) for a, b in zip(smalls, bigs)]
    request_ratios = [ratio(b["request_p50_ms"], a["request_p50_ms"]) for a, b in zip(smalls, bigs)]
    return {"machine": info, "settings": asdict(plan), "registration_s": statistics.median(registrations),
            "registrations_s": registrations, "registration_vms": plan.big_vms, "snapshot": snapshot, "rss_mib": rss,
            "held": held, "small": small, "big": big, "big_with_pools": loaded,
            "grant_p50_ratio": median_of(grant_ratios), "grant_p50_ratios": grant_ratios,
            "request_p50_ratio": median_of(request_ratios), "request_p50_ratios": request_ratios,
            "grant_choice_us": choice,
            "keep_alive": {**keep_alive, "pools": held["held"]},
            "contended": asdict(contended), "double_claims": len(contended.violations), "churn": churn,
            "elapsed_s": round(time.monotonic() - started, 1)}


def scale_problems(r: dict[str, Any]) -> list[str]:
    """What makes a run wrong, not slow: a pool not held, an error, a double claim, a figure missing."""
    problems = []
    if r["held"]["held"] != r["settings"]["pools"] or r["held"]["errors"]:
        problems.append(f"held {r['held']['held']} of {r['settings']['pools']} pools ({r['held']['errors']})")
    if r["double_claims"]:
        problems.append(f"{r['double_claims']} double claim(s): {r['contended']['violations'][:3]}")
    for name in ("small", "big", "big_with_pools"):
        fleet = r[name]
        if fleet["grant_failures"] or fleet["request_errors"]:
            problems.append(f"{name}: errors {fleet['grant_failures']} {fleet['request_errors']}")
    if r["churn"]["errors"] or r["contended"]["errors"]:
        problems.append(f"grant/release errors: {r['churn']['errors']} {r['contended']['errors']}")
    figures = {"grant p50 ratio": r["grant_p50_ratio"], "request p50 ratio": r["request_p50_ratio"],
               "snapshot": r["snapshot"]["p50_ms"], "keep-alive": r["keep_alive"]["requests_per_s"],
               "churn grants/s": r["churn"]["grants_per_s"]}
    problems += [f"no figure for {name}" for name, value in figures.items() if value is None]
    return problems


def render_scale(r: dict[str, Any]) -> str:
    small, big, loaded, churn, c = r["small"], r["big"], r["big_with_pools"], r["churn"], r["contended"]
    m = r["machine"]
    rows = [
        ["machine", f"{m['cpu']}, {m['cores_usable']} cores, load {m['load_average']}", ""],
        [f"registration of {r['registration_vms']:,} VMs", f"{r['registration_s']:.1f} s",
         "median of " + ", ".join(f"{x:.1f}" for x in r["registrations_s"]) + " s"],
        [f"replica snapshot load ({r['snapshot']['keys']:,} keys)", f"{r['snapshot']['p50_ms']:.0f} ms", ""],
        ["RSS per process (MiB)", ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["rss_mib"].items()) if v), ""],
        [f"pools held ({r['held']['held']:,})", f"leased in {r['held']['elapsed_s']:.1f} s", str(r["held"]["errors"] or "")],
        [f"grant p50/p99, pool of {SCALE_POOL}: {small['vms']:,} VMs", f"{small['grant_p50_ms']} / {small['grant_p99_ms']} ms", ""],
        [f"grant p50/p99, pool of {SCALE_POOL}: {big['vms']:,} VMs", f"{big['grant_p50_ms']} / {big['grant_p99_ms']} ms",
         f"ratio {r['grant_p50_ratio']} (target <= 1.2), rounds {r['grant_p50_ratios']}"],
        [f"a grant's choice of VMs in-process: {small['vms']:,} / {big['vms']:,} VMs",
         f"{r['grant_choice_us']['small_us']} / {r['grant_choice_us']['big_us']} us",
         f"ratio {r['grant_choice_us']['ratio']}, rounds {r['grant_choice_us']['ratios']}"],
        [f"uncontended grants/s (churn: {len(CHURN_SERVICES)} services, one owned by each registry)",
         f"{churn['grants_per_s']}", "target >= 1,000/s"],
        ["CPU per grant/release cycle (ms)", ", ".join(f"{k} {v}" for k, v in churn["cpu_ms_per_cycle"].items()),
         "every host watches every cycle"],
        [f"contended ({SCARCE_VMS} VMs): grants/s, refusals/s", f"{c['grants_per_s']} / {c['refusals_per_s']}",
         f"double claims {r['double_claims']}"],
        [f"etcd requests/s keeping {r['keep_alive']['pools']:,} pools alive", f"{r['keep_alive']['requests_per_s']}",
         "target O(hosts)"],
        [f"request p50 at C=1: {small['vms']:,} / {big['vms']:,} VMs", f"{small['request_p50_ms']} / {big['request_p50_ms']} ms",
         f"ratio {r['request_p50_ratio']} (target <= 1.1), rounds {r['request_p50_ratios']}"],
        [f"with {r['held']['held']:,} pools held: grant p50/p99, request p50",
         f"{loaded['grant_p50_ms']} / {loaded['grant_p99_ms']} ms, {loaded['request_p50_ms']} ms", "renewals running"],
        [f"etcd db size over {churn['cycles']:,} cycles (MiB)", " -> ".join(str(x) for x in churn["db_size_mib"]),
         "in use: " + " -> ".join(str(x) for x in churn["db_in_use_mib"])],
    ]
    return table(rows, ["scale", "figure", "note"])

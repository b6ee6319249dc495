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
claims from the claims' history in etcd); etcd's db size across 20,000 grant/release cycles in four quarters
(with compaction it must level off). `--quick` runs the same steps on a small cluster (CI smoke).

Issue 19's measures of the design besides (bench.scalereport draws the targets from them): the
churn's CPU per grant/release cycle split between the processes party to a cycle (the consumer host
it is leased for, c-churn, and the producer host of its service) and those not party to it, each
net of its own background in an idle window; etcd's watch events sent per grant (its own counter,
etcd_debugging_mvcc_events_total, "events sent by this member": one per event per watcher) in a
cluster of its own at 10 and at 40 hosts, most of them light hosts that only register and watch
(`leasenet presence`); the etcd requests/s spent keeping the pools alive, beyond the hosts' liveness
(two idle windows, without and with the pools). The churn keeps --grants-in-flight grants in flight
(a registry may pipeline them).

The roles here run as `python -m leasenet.bench ROLE TASK RESULT` like the other sections'."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


from leasenet.bench.harness import Bench, machine
from leasenet.bench.measure import CpuMeter, etcd_counts, ms, percentile, ratio
from leasenet.bench.plans import (
    NETWORK, VNI, Cell, GrantsResult, GrantsTask, LoadResult, LoadTask, RaceConsumerHost, make_plan,
)
from leasenet.bench.scaleroles import HoldResult, HoldTask, RateResult, RateTask
from leasenet.bench.scalereport import (
    CONSUMER, ETCD as ETCD_KIND, PRODUCER, REGISTRY, Party, cycle_cpu, growth, net_cpu, non_party_share, scale_targets,
)
from leasenet.cluster import ETCD, identity_of
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
CHURN_CONSUMER = "c-churn"  # the consumer host the churn and the contended run lease for (no consumer VMs)
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
    grants_in_flight: int  # grant-rate workers in all, split over the lanes (churn: a service at its owner each;
    # contended: the scarce service at each registry); each keeps one grant or release in flight
    contended_s: float
    churn_quarter_s: float  # each quarter of the churn ends after this long even if its cycles are not done
    watch_hosts: tuple[int, ...]  # the watch fan-out's fleet sizes (producer and consumer hosts)
    watch_cycles: int  # grant/release cycles at each of them
    fleet_rounds: int = 3  # small and big fleets alternate this many times: each ratio is the median of the rounds'

    @property
    def big_vms(self) -> int:
        return self.producer_hosts * self.vms_per_host

    @property
    def churn_vms(self) -> int:
        """VMs per churn service: twice what its share of the grants in flight can hold, so that the
        churn stays uncontended however many are in flight."""
        return max(200, 2 * SCALE_POOL * per_lane(self.grants_in_flight, len(CHURN_SERVICES)))


def per_lane(in_flight: int, lanes: int) -> int:
    return max(1, -(-in_flight // lanes))


def scale_plan(quick: bool, grants_in_flight: int | None = None) -> ScalePlan:
    """`grants_in_flight`: the churn's and the contended run's workers in all (default 8 quick, 32 full)."""
    if quick:
        return ScalePlan(True, 20, 2, 100, 2, 20, 10, 0.3, 1.0, 100, grants_in_flight or 8, 1.0, 30.0,
                         watch_hosts=(4, 6), watch_cycles=60, fleet_rounds=2)
    return ScalePlan(False, 100, 10, 1000, 4, 2000, 200, 3.0, 10.0, 20000, grants_in_flight or 32, 5.0, 150.0,
                     watch_hosts=(10, 40), watch_cycles=1000)




# --- meters --------------------------------------------------------------------------------------
WATCH_EVENTS = "etcd_debugging_mvcc_events_total"  # "Total number of events sent by this member" (per watcher)
WATCHERS = "etcd_debugging_mvcc_watcher_total"  # watchers open now
PENDING_EVENTS = "etcd_debugging_mvcc_pending_events_total"  # events not yet sent


def etcd_gauges(metrics_url: str, *names: str) -> dict[str, float]:
    """Some of etcd's own gauges and counters (e.g. etcd_mvcc_db_total_size_in_bytes) from its /metrics."""
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
        per_host = p.pools // p.consumer_hosts
        for h in range(p.consumer_hosts):
            vms = [(f"10.{40 + h}.{j // 250}.{1 + j % 250}", f"scale-{h}-{j}") for j in range(per_host)]
            self.consumers[f"c{h + 1}"] = vms
        specs = {name: b.consumer(name, vms + ([PROBE] if name == "c1" else []),
                                  ",".join(self.registries[::1 if h % 2 == 0 else -1]))
                 for h, (name, vms) in enumerate(self.consumers.items())}
        specs |= self.fleet_specs("small", 0)
        specs["p-scarce"] = b.producer("p-scarce", SCARCE_SERVICE, SCARCE_VMS, "10.19.0.1", history=False)
        specs |= churn_hosts(b, p, ",".join(self.registries))
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
        task = GrantsTask(self.registries[0], SCALE_SERVICE, p.grants, 5, first, CHURN_CONSUMER)
        grants = b.role(f"grants-{label}", task, GrantsResult, 300)
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

    def idle_window(self) -> tuple[dict[str, Any], dict[str, float]]:
        """etcd's received messages per second during an idle window (what the fleet's upkeep costs
        it: keep-alives), and each process's CPU per second meanwhile (its background)."""
        meter = self.cpu_meter()
        before, t0 = etcd_counts(self.metrics), time.monotonic()
        meter.begin()
        time.sleep(self.plan.idle_s)  # a measuring window, not synchronisation
        meter.end()
        after, elapsed = etcd_counts(self.metrics), time.monotonic() - t0
        per_method = {m: round((after[m] - before[m]) / elapsed, 2) for m in after if after[m] > before[m]}
        return ({"window_s": round(elapsed, 2), "requests_per_s": round(sum(per_method.values()), 2),
                 "per_method": per_method, "processes": len(meter.pids) - 1},
                {name: seconds / elapsed for name, seconds in meter.used.items()})

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
        return CpuMeter(pids, precise=True)

    def rate(self, name: str, lanes: list[list[str]], first: int, cycles: int, duration_s: float,
             watch: bool) -> RateResult:
        """The grant-rate role over `lanes`, the grants in flight split between them, leasing for the
        churn's consumer host; `watch`: the claims' history followed and checked."""
        task = RateTask(lanes, per_lane(self.plan.grants_in_flight, len(lanes)), first, cycles, duration_s,
                        CHURN_CONSUMER, self.cluster.etcd_endpoints if watch else [])
        # besides its duration: following the claims (at most 60 s to sync, 30 s to drain), the last
        # calls (10 s each) and a process's start on a busy machine
        return self.bench.role(name, task, RateResult, duration_s + 240)

    def parties(self) -> dict[str, Party]:
        """Each measured process's kind and the churn lanes (CHURN_SERVICES) it is party to."""
        lanes = frozenset(range(len(CHURN_SERVICES)))
        out = {"etcd": Party(ETCD_KIND)}
        for name, proc in self.cluster.procs.items():
            kind = identity_of(proc.args).kind
            if kind is Kind.REGISTRY:
                out[name] = Party(REGISTRY)
            elif kind is Kind.CONSUMER:
                out[name] = Party(CONSUMER, lanes if name == CHURN_CONSUMER else frozenset())
            else:
                service = name.removeprefix("p-")
                out[name] = Party(PRODUCER, frozenset({CHURN_SERVICES.index(service)} if service in CHURN_SERVICES
                                                      else ()))
        return out

    def churn(self, before: dict[str, float]) -> dict[str, Any]:
        """grant/release cycles in four quarters, etcd's db size after each: uncontended grants/s, and
        where each cycle's CPU went, net of each process's background: its CPU seconds per second in
        the idle windows `before` (with the pools held) and right after the churn, averaged."""
        p = self.plan
        db = "etcd_mvcc_db_total_size_in_bytes"
        use = "etcd_mvcc_db_total_size_in_use_in_bytes"
        sizes = [etcd_gauges(self.metrics, db, use)]
        quarters = []
        lanes = owner_lanes(self.registries)
        meter = self.cpu_meter()
        events = etcd_gauges(self.metrics, WATCH_EVENTS, WATCHERS)
        meter.begin()
        t0 = time.monotonic()
        for q in range(4):
            self.say(f"scale: churn quarter {q + 1}/4, {p.churn_cycles // 4} grant/release cycles, "
                     f"{p.grants_in_flight} in flight")
            quarters.append(self.rate(f"churn-{q + 1}", lanes, 100_000 + q * 10_000, p.churn_cycles // 4,
                                      p.churn_quarter_s, True))
            sizes.append(etcd_gauges(self.metrics, db, use))
        meter.end()
        window = time.monotonic() - t0
        events_after = etcd_gauges(self.metrics, WATCH_EVENTS, WATCHERS)
        self.say(f"scale: an idle window of {p.idle_s:.0f} s after the churn: each process's background")
        _, after = self.idle_window()
        background = {name: (before.get(name, rate) + rate) / 2 for name, rate in after.items()}
        grants = sum(r.grants for r in quarters)
        elapsed = sum(r.elapsed_s for r in quarters)
        lane_cycles = [sum(r.lane_grants[i] for r in quarters) for i in range(len(lanes))]
        cpu = cycle_cpu(net_cpu(meter.used, background, window), self.parties(), lane_cycles)
        unfloored = cycle_cpu(net_cpu(meter.used, background, window, floor=False), self.parties(), lane_cycles)
        if grants:
            cpu["client"] = round(sum(r.cpu_s for r in quarters) * 1000 / grants, 4)
        violations = [v for r in quarters for v in r.violations]
        # with a core of its own each: what one registry core and one etcd core could sustain at this cost
        projection = {f"grants_per_s_per_{kind}_core": round(1000 / cpu[kind], 1) if cpu.get(kind) else None
                      for kind in ("registries", "etcd")}
        return {"cycles": grants, "grants_per_s": round(grants / elapsed, 1) if elapsed else None,
                "concurrency": per_lane(p.grants_in_flight, len(lanes)) * len(lanes),
                "lanes": [{"service": service, "registry": registry, "grants": n}
                          for (service, registry), n in zip(lanes, lane_cycles)],
                "consumer_host": CHURN_CONSUMER, "cpu_ms_per_cycle": cpu, "non_party_pct": non_party_share(cpu),
                "cpu_ms_per_cycle_unfloored": unfloored, "projection": projection,
                "cpu_window_s": round(window, 1), "cpu_s": {k: round(v, 3) for k, v in meter.used.items()},
                "background_cpu_pct": {k: round(v * 100, 2) for k, v in background.items()},
                "watch_events_per_grant": round((events_after.get(WATCH_EVENTS, 0) - events.get(WATCH_EVENTS, 0))
                                                / grants, 2) if grants else None,
                "watchers": events_after.get(WATCHERS),
                "claim_lines": sum(r.claim_lines for r in quarters), "violations": violations,
                "refusals": sum(r.refusals for r in quarters),
                "errors": dict(sum((Counter(r.errors) for r in quarters), Counter())),
                "db_size_mib": [round(s.get(db, 0) / 2**20, 2) for s in sizes],
                "db_in_use_mib": [round(s.get(use, 0) / 2**20, 2) for s in sizes]}

    def watch_fanout(self) -> dict[str, Any]:
        """etcd's watch events sent per grant at each fleet size of the plan, in a cluster of its own:
        two registries, the churn's consumer host and producer hosts, and light hosts making up the
        rest (`leasenet presence`, half producer, half consumer: a host record kept alive and a
        replica of what that kind of host watches); the churn leases as in the main run."""
        p = self.plan
        fan = Bench(self.bench.workdir / "fanout", make_plan(True, 1, tls=False), self.say)
        try:
            fan.cluster.start_etcd()
            assert fan.cluster.etcd is not None
            metrics_url = fan.cluster.etcd.members[0].metrics_url
            fan.config.write_text(to_toml(SCALE_CLUSTER))
            regs = fan.start({f"r{i}": ["registry", "--host-id", f"r{i}", "--listen", "127.0.0.1:0",
                                        "--cluster-config", str(fan.config)] for i in (1, 2)})
            registries = [regs["r1"].address, regs["r2"].address]
            real = fan.start(churn_hosts(fan, p, ",".join(registries)))
            lanes = owner_lanes(registries)
            light: dict[str, int] = {}  # name -> pid
            sizes = []
            for size, hosts in enumerate(p.watch_hosts):
                more = {f"light{n + 1}": ("producer" if n % 2 == 0 else "consumer")
                        for n in range(len(light), max(0, hosts - len(real)))}
                self.say(f"scale: watch fan-out at {hosts} hosts: {len(real)} hosts and {len(light) + len(more)} "
                         "light hosts that only register and watch")
                started = [fan.cluster.start_presence(Kind(kind), name, watch=True, wait=False)
                           for name, kind in more.items()]
                for proc in started:  # tens of processes starting at once on a busy machine: a generous deadline
                    fan.cluster.wait_ready(proc, 60 + 10 * len(started))
                light |= {proc.name: proc.process.pid for proc in started if proc.process is not None}
                quiet_events(metrics_url)  # the registrations' events are sent before counting starts
                meter = CpuMeter(light, precise=True)
                before = etcd_gauges(metrics_url, WATCH_EVENTS, WATCHERS)
                meter.begin()
                result = fan.role(f"fanout-{hosts}", RateTask(lanes, per_lane(p.grants_in_flight, len(lanes)),
                                                              300_000 + size * 10_000, p.watch_cycles, 120.0,
                                                              CHURN_CONSUMER, []), RateResult, 300)
                quiet_events(metrics_url)
                meter.end()
                after = etcd_gauges(metrics_url, WATCH_EVENTS, WATCHERS)
                sent = after.get(WATCH_EVENTS, 0) - before.get(WATCH_EVENTS, 0)
                sizes.append({"hosts": hosts, "light_hosts": len(light), "watchers": after.get(WATCHERS),
                              "grants": result.grants, "grants_per_s": result.grants_per_s, "events": sent,
                              "events_per_grant": round(sent / result.grants, 2) if result.grants else None,
                              "light_host_cpu_ms_per_cycle": round(statistics.mean(meter.used.values()) * 1000
                                                                   / result.grants, 4)
                              if meter.used and result.grants else None,
                              "errors": result.errors})
        finally:
            fan.close()
        return {"sizes": sizes, "growth": growth(sizes), "key_schema": keys.ROOT,
                "concurrency": per_lane(p.grants_in_flight, len(lanes)) * len(lanes)}


def churn_hosts(bench: Bench, plan: ScalePlan, registries: str) -> dict[str, list[str]]:
    """The churn's consumer host (no consumer VMs: pools are leased for it by the grant-rate role)
    and its producer hosts, one per churn service."""
    specs = {CHURN_CONSUMER: bench.consumer(CHURN_CONSUMER, [], registries)}
    for i, name in enumerate(CHURN_SERVICES):
        specs[f"p-{name}"] = bench.producer(f"p-{name}", name, plan.churn_vms, f"10.{17 - i}.0.1", history=False)
    return specs


def owner_lanes(registries: list[str]) -> list[list[str]]:
    """Each churn service at the registry owning it (of r1, r2), as a consumer host would reach it."""
    by_id = dict(zip(("r1", "r2"), registries))
    return [[service, by_id[owner(service, by_id) or "r1"]] for service in CHURN_SERVICES]


def quiet_events(metrics_url: str, timeout_s: float = 30.0) -> None:
    """Wait until etcd has no watch event left to send and its count of sent events stays put
    between two reads (a deadline, then go on: the count then includes what was still in flight)."""
    deadline = time.monotonic() + timeout_s
    last = -1.0
    while time.monotonic() < deadline:
        now = etcd_gauges(metrics_url, WATCH_EVENTS, PENDING_EVENTS)
        if now.get(PENDING_EVENTS, 0) == 0 and now.get(WATCH_EVENTS, 0) == last:
            return
        last = now.get(WATCH_EVENTS, 0)
        time.sleep(0.2)


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


def run_scale(workdir: Path, quick: bool, say: Callable[[str], None],
              grants_in_flight: int | None = None) -> dict[str, Any]:
    plan = scale_plan(quick, grants_in_flight)
    s = ScaleBench(workdir, plan, say)
    started = time.monotonic()
    try:
        info = machine()
        # over as many hosts at both sizes: the cost may grow with hosts, it must not with VMs
        choice = choice_cost_us(plan.small_vms, plan.big_vms, plan.producer_hosts)
        fanout = s.watch_fanout()  # in a cluster of its own, stopped before the main one starts
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
        say(f"scale: an idle window of {plan.idle_s:.0f} s without pools: the hosts' liveness")
        hosts_upkeep, _ = s.idle_window()
        held = s.hold()
        snapshot = s.snapshot()
        say(f"scale: grants and the request path with {plan.big_vms} VMs and {held['held']} pools held")
        loaded = s.fleet("big-with-pools", 30_000)
        say(f"scale: an idle window of {plan.idle_s:.0f} s with {held['held']} pools held")
        pools_upkeep, background = s.idle_window()
        rss = s.rss()
        say(f"scale: contended grants for {SCARCE_VMS} VMs from both registries for {plan.contended_s:.0f} s, "
            f"{plan.grants_in_flight} in flight")
        # both registries asked for the one scarce service: its owner grants, the other forwards or races it
        contended = s.rate("contended", [[SCARCE_SERVICE, r] for r in s.registries], 200_000, 0, plan.contended_s, True)
        churn = s.churn(background)
    finally:
        s.close()
    grant_ratios = [ratio(b["grant_p50_ms"], a["grant_p50_ms"]) for a, b in zip(smalls, bigs)]
    request_ratios = [ratio(b["request_p50_ms"], a["request_p50_ms"]) for a, b in zip(smalls, bigs)]
    pools_per_method = {m: round(v - hosts_upkeep["per_method"].get(m, 0.0), 2)
                        for m, v in pools_upkeep["per_method"].items()}
    report = {
        "machine": info, "load_average_end": machine()["load_average"], "settings": asdict(plan),
        "registration_s": statistics.median(registrations), "registrations_s": registrations,
        "registration_vms": plan.big_vms, "snapshot": snapshot, "rss_mib": rss, "held": held, "small": small,
        "big": big, "big_with_pools": loaded, "grant_p50_ratio": median_of(grant_ratios),
        "grant_p50_ratios": grant_ratios, "request_p50_ratio": median_of(request_ratios),
        "request_p50_ratios": request_ratios, "grant_choice_us": choice,
        "keep_alive": {"pools": held["held"], "hosts": hosts_upkeep, "with_pools": pools_upkeep,
                       "pools_requests_per_s": round(pools_upkeep["requests_per_s"] - hosts_upkeep["requests_per_s"], 2),
                       "pools_per_method": pools_per_method},
        "watch_fanout": fanout,
        "contended": {**asdict(contended), "concurrency": per_lane(plan.grants_in_flight, 2) * 2},
        "double_claims": len(contended.violations) + len(churn["violations"]), "churn": churn,
        "elapsed_s": round(time.monotonic() - started, 1)}
    report["targets"] = scale_targets(report)
    return report

"""What `leasenet bench` runs: the cluster it measures on, the plan of a run (--quick or full),
and the typed tasks and results its measuring roles exchange with the harness as JSON files."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from mapping.config import ClusterConfig
from mapping.model import LeasePolicy, Network, Service, parse_target

NETWORK, VNI = "bench", 77
DATA_SERVICE, DATA_TARGET, DATA_VMS = "echo", "10.7.255.1:7", 64
# 4 consumer VMs with a pool of 16 each: 64 requests in flight find 64 unused producer VMs. (One
# pool of 64 cannot be granted: its one etcd transaction would exceed etcd's 128 operations.)
DATA_CONSUMERS = [(f"10.7.0.{i}", f"bench-data-token-{i}") for i in range(1, 5)]
DATA_POOL = DATA_VMS // len(DATA_CONSUMERS)
GRANT_SERVICE, GRANT_TARGET, GRANT_POOL, GRANT_VMS = "grant4", "10.7.255.2:7", 4, 12
RACE_SERVICE, RACE_TARGET, RACE_POOL, RACE_VMS = "scarce", "10.7.255.3:7", 2, 12
RACE_HOSTS, RACE_VMS_PER_HOST = 4, 4  # 16 consumer VMs want 2 producer VMs each: 32 > 12
FO_SERVICE, FO_TARGET, FO_POOL, FO_VMS, FO_CONSUMERS = "failover", "10.7.255.4:7", 2, 8, 4

REQUEST_TIMEOUT_S = 10.0
PAYLOADS = (100, 16 * 1024)
CONCURRENCIES = (1, 16, 64)
MODES = ("unary", "stream")
# The compared targets of a data-path cell, in the order of one round of slices (the next round runs
# them backwards): the overlay sits between the two it is compared with, so each of its ratios is
# taken between adjacent slices. With TLS, the same three over mutual TLS on every hop follow.
PLAIN = ("direct", "overlay", "relay")
TLS = ("direct-tls", "overlay-tls", "relay-tls")
# The method's own check: the overlay against itself (the same consumer host, a second name)
SELF = ("overlay", "overlay-again")
# Metrics on and off (issue 14): a second plaintext overlay whose processes serve /metrics, placed
# next to the overlay (which runs with metrics off, recording nothing) in the cell METRICS_CELL
METRICS_SUFFIX = "-metrics"
METRICS_ON = "overlay" + METRICS_SUFFIX
METRICS_CELL = ("unary", 100, 64)
# numerator / denominator: the ratios reported per cell (only those whose targets were measured)
PAIRS = (("overlay", "direct"), ("overlay", "relay"), ("relay", "direct"),
         ("overlay-tls", "direct-tls"), ("overlay-tls", "relay-tls"), ("relay-tls", "direct-tls"),
         ("overlay-tls", "overlay"), ("direct-tls", "direct"), ("overlay", "overlay-again"), (METRICS_ON, "overlay"))


def _pool_service(name: str, target: str, pool: int, ttl_s: int) -> Service:
    """A service whose pools have a fixed size and are never released for idleness during a run."""
    return Service(name, NETWORK, *parse_target(target),
                   LeasePolicy(min_pool=pool, max_pool=pool, lease_ttl_s=ttl_s, idle_release_s=600))


CLUSTER = ClusterConfig([Network(NETWORK, VNI)], [
    _pool_service(DATA_SERVICE, DATA_TARGET, DATA_POOL, 10),
    _pool_service(GRANT_SERVICE, GRANT_TARGET, GRANT_POOL, 10),
    _pool_service(RACE_SERVICE, RACE_TARGET, RACE_POOL, 5),
    _pool_service(FO_SERVICE, FO_TARGET, FO_POOL, 5),
])

# The VM life cycle (bench --calls, bench.vmlife): four small fleets, a pool of 1 and of 4 each of
# command VMs (the notebook server as processes) and of in-process VMs, for grant latency side by
# side; the consumer VM that uses and releases VMs (resets) leases from the command VMs' pool of 1.
LIFE_VMS = 4  # per fleet: a pool of 4 takes the whole fleet, then gives it back
# service -> (its target, pool size, command VMs?, the first VM's address)
LIFE_FLEETS = {"warm1": ("10.7.255.6:7", 1, True, "10.7.20.1"), "warm4": ("10.7.255.7:7", 4, True, "10.7.21.1"),
               "inproc1": ("10.7.255.8:7", 1, False, "10.7.22.1"), "inproc4": ("10.7.255.9:7", 4, False, "10.7.23.1")}
LIFE_SERVICE = "warm1"  # where the resets and kills happen
LIFE_CONSUMER = ("10.7.0.9", "bench-life-token")
LIFE_CLUSTER = ClusterConfig([Network(NETWORK, VNI)], [
    _pool_service(name, target, pool, 10) for name, (target, pool, _, _) in LIFE_FLEETS.items()])


# --- the plan of a run ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CellSpec:
    mode: str  # unary | stream
    payload: int  # bytes
    concurrency: int
    targets: tuple[str, ...] = PLAIN  # one round: each of them for one slice
    check: bool = False  # the method's self-check (SELF), not a comparison


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    runs: int  # leasing and failover: repetitions
    rounds: int  # data path: rounds of alternating slices per cell (the number of paired ratios)
    check_rounds: int  # the same for the self-check cells
    slice_warmup_s: float  # per slice, not measured: callers and streams settle
    slice_s: float  # per slice, measured
    idle_s: float
    cells: list[CellSpec]
    grants: int
    race_s: float
    failover_before_s: float
    failover_after_s: float
    tls: bool = False  # some cells have the TLS targets


def make_plan(quick: bool, runs: int, rounds: int = 10, tls: bool = True) -> Plan:
    """--quick: every kind of step once, briefly (with TLS, in one cell); otherwise every cell, each
    with the TLS targets besides the plaintext ones when `tls`."""
    if quick:
        tls_cell = ("unary", 100, 16) if tls else None
        cells = [CellSpec(m, p, c, PLAIN + TLS if (m, p, c) == tls_cell else PLAIN)
                 for m, p, c in (("unary", 100, 1), ("unary", 100, 16), ("stream", 100, 16), ("unary", 16384, 16),
                                 ("stream", 16384, 16))]
        # 8 pairs: the median's interval is their whole range, which holds 1.00 for a fair method
        # in all but 2 of 256 cases (0.8%)
        cells.append(CellSpec("unary", 100, 16, SELF, check=True))
        return Plan(True, 1, 2, 8, 0.05, 0.15, 0.3, cells, grants=10, race_s=1.5, failover_before_s=0.5,
                    failover_after_s=1.5, tls=tls)
    targets = PLAIN + TLS if tls else PLAIN
    cells = [CellSpec(m, p, c, with_metrics(targets) if (m, p, c) == METRICS_CELL else targets)
             for m in MODES for p in PAYLOADS for c in CONCURRENCIES]
    cells += [CellSpec("unary", 100, c, SELF, check=True) for c in (1, 64)]
    return Plan(False, runs, rounds, rounds, 0.08, 0.2, 3.0, cells, grants=40, race_s=3.0, failover_before_s=1.0,
                failover_after_s=2.0, tls=tls)


def with_metrics(targets: tuple[str, ...]) -> tuple[str, ...]:
    """The targets with the metrics-on overlay next to the overlay (between it and direct)."""
    return (targets[0], METRICS_ON, *targets[1:])


def rounds_of(spec: CellSpec, plan: Plan) -> list[Cell]:
    """Every slice of one cell, in the order they run: round after round, each round the targets
    in the other direction, so neither side of a pair always runs first."""
    out = []
    for r in range(plan.check_rounds if spec.check else plan.rounds):
        order = spec.targets if r % 2 == 0 else spec.targets[::-1]
        out += [Cell(t, spec.mode, spec.payload, spec.concurrency, plan.slice_warmup_s, plan.slice_s, r, spec.check)
                for t in order]
    return out


# --- tasks: what the harness asks a role process to do -------------------------------------------
@dataclass(frozen=True, slots=True)
class Cell:
    """One measured window (a slice): a target (PLAIN, TLS, SELF, or idle: nothing sent) in one style."""

    target: str
    mode: str = ""
    payload: int = 0
    concurrency: int = 0
    warmup_s: float = 0.0
    duration_s: float = 0.0
    round: int = 0  # slices of one cell with the same round are paired
    check: bool = False


@dataclass(frozen=True, slots=True)
class LoadTask:
    role: ClassVar[str] = "load"
    consumers: list[list[str]]  # [network, src, token, target] per consumer VM
    addresses: dict[str, str]  # target -> the server's address
    etcd_metrics: str
    cells: list[Cell]
    pids: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> process name -> pid


@dataclass(frozen=True, slots=True)
class GrantsTask:
    role: ClassVar[str] = "grants"
    registry: str
    service: str
    count: int
    warmup: int
    first: int  # numbers the fresh consumer VMs, unique across runs
    consumer_host: str = ""  # whom the pools are leased for (its certificate is presented); "": bench-grants


@dataclass(frozen=True, slots=True)
class RaceConsumerHost:
    address: str
    vms: list[list[str]]  # [address, token] per consumer VM


@dataclass(frozen=True, slots=True)
class RaceTask:
    role: ClassVar[str] = "race"
    registry: str
    target: str
    duration_s: float
    consumers: list[RaceConsumerHost]


@dataclass(frozen=True, slots=True)
class FailoverTask:
    role: ClassVar[str] = "failover"
    consumer: str
    registry: str
    service: str
    target: str
    vms: list[list[str]]  # [address, token] per consumer VM
    workers_per_vm: int
    payload: int
    victims: dict[str, int]  # producer host -> pid
    before_s: float
    after_s: float


# --- results: what a role process answers --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CellResult:
    target: str
    mode: str = ""
    payload: int = 0
    concurrency: int = 0
    warmup_s: float = 0.0
    duration_s: float = 0.0
    round: int = 0
    check: bool = False
    sent: int = 0
    answered: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    said: dict[str, str] = field(default_factory=dict)  # an error's first sentence, by status
    measured: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    elapsed_s: float = 0.0
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    etcd: dict[str, int] = field(default_factory=dict)  # gRPC messages etcd received, per method

    @property
    def key(self) -> tuple[str, int, int, bool]:
        """The cell this slice belongs to."""
        return self.mode, self.payload, self.concurrency, self.check


@dataclass(frozen=True, slots=True)
class LoadResult:
    cells: list[CellResult]
    event_loop: str = "asyncio"


@dataclass(frozen=True, slots=True)
class GrantsResult:
    grants: int
    p50_ms: float | None
    p99_ms: float | None
    pool_sizes: dict[str, int]
    failures: dict[str, int]
    event_loop: str = "asyncio"


@dataclass(frozen=True, slots=True)
class RaceResult:
    granted: int
    served: int
    detached: int
    exhausted: int
    errors: dict[str, int]
    error_samples: list[str]
    elapsed_s: float
    grants_per_s: float
    violations: list[str]
    event_loop: str = "asyncio"


@dataclass(frozen=True, slots=True)
class FailoverResult:
    victim: str
    consumer_vms_hit: list[str]
    requests: int
    ok: int
    errors: int
    errors_by_code: dict[str, int]
    errors_idempotent: int
    unanswered: int
    error_samples: list[str]
    recovered_s: dict[str, float | None]
    failover_s: float | None
    event_loop: str = "asyncio"


T = TypeVar("T")


def decode(cls: type[T], data: dict[str, Any]) -> T:
    """A task or result dataclass from its JSON form (nested dataclasses and lists of them too)."""
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        items = get_args(hint)[0] if get_origin(hint) is list and get_args(hint) else None
        if isinstance(hint, type) and is_dataclass(hint):
            value = decode(hint, value)
        elif isinstance(items, type) and is_dataclass(items):
            value = [decode(items, v) for v in value]
        values[f.name] = value
    return cls(**values)

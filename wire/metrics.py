"""Every Prometheus metric of every leasenet process, defined here and only here (METRICS.md has
the table). Processes record with one-line calls; label children on the request path are bound
once and cached (`requests`, `etcd_op`), so a request costs a dict lookup, a counter and a
histogram bucket. Gauges that describe state (pools, live hosts, tunnel streams) are sampled when
scraped, on the process's event loop, so the hot path pays nothing for them.

Label values are bounded: service names (configured), status names, operation names, error type
names. Never a VM address, lease id or request id.

`serve(listen, ...)` starts the `/metrics` HTTP endpoint (plaintext, prometheus_client's thread)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from wire.errors import LeasenetError, Status

# request latencies: from sub-millisecond echo round trips to the 10 s default deadline
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SAMPLE_TIMEOUT_S = 2.0  # a scrape waits this long for the event loop to sample its gauges

BUILD_INFO = Gauge("leasenet_build_info", "1, labelled with what this process is and runs on",
                   ["kind", "version", "event_loop"])

REQUESTS = Counter("leasenet_requests_total", "Requests answered, by process kind, service and gRPC status name "
                   "(consumer host: every VM request; producer host: every frame a producer VM answered)",
                   ["kind", "service", "code"])
REQUEST_DURATION = Histogram("leasenet_request_duration_seconds", "Consumer host: a VM request end to end; producer "
                             "host: a producer VM's execution", ["kind", "service"], buckets=LATENCY_BUCKETS)
CALLS = Counter("leasenet_calls_total", "Transparent gRPC calls through VIP endpoints (consumer host) or to "
                "producer VMs' own servers (producer host), by process kind, call kind (unary, client_stream, "
                "server_stream, bidi: from the message counts) and gRPC status name", ["kind", "call_kind", "code"])
CALL_DURATION = Histogram("leasenet_call_duration_seconds", "A transparent gRPC call from its start to its status, by "
                          "process kind and call kind", ["kind", "call_kind"], buckets=LATENCY_BUCKETS)
RESOURCE_EXHAUSTED = Counter("leasenet_resource_exhausted_total", "RESOURCE_EXHAUSTED answers, by process kind and "
                             "why (METRICS.md lists the reasons)",
                             ["kind", "reason"])

LEASE_OPERATIONS = Counter("leasenet_lease_operations_total", "Leasing calls at the registry, by operation "
                           "(grant, grow, shrink, renew, release) and result (ok, refused, conflict, error)",
                           ["op", "result"])
GRANT_DURATION = Histogram("leasenet_grant_duration_seconds", "Registry: a successful RequestLease (grant) from "
                           "call to answer", buckets=LATENCY_BUCKETS)
GRANT_CONFLICTS = Counter("leasenet_grant_conflicts_total", "Registry: grant or grow transactions that lost a race "
                          "(a chosen VM was claimed or changed meanwhile) and were retried")

TUNNEL_FRAMES = Counter("leasenet_tunnel_frames_total", "Tunnel frames through this host, by direction (in, out)",
                        ["direction"])
TUNNEL_FRAMES_REJECTED = Counter("leasenet_tunnel_frames_rejected_total", "Producer host: frames refused before a "
                                 "producer VM saw them, by the refusal's error type", ["reason"])

ETCD_REQUESTS = Counter("leasenet_etcd_requests_total", "etcd requests, by operation", ["op"])
ETCD_DURATION = Histogram("leasenet_etcd_request_duration_seconds", "etcd request latency, by operation (watches "
                          "are streams and not timed)", ["op"], buckets=LATENCY_BUCKETS)
ETCD_ERRORS = Counter("leasenet_etcd_errors_total", "etcd requests that failed (unavailable, refused), by operation",
                      ["op"])

REPLICA_LAG = Gauge("leasenet_replica_revision_lag", "Revisions the local replica is behind the newest etcd "
                    "revision its watch has reported")
REPLICA_RELOADS = Counter("leasenet_replica_reloads_total", "Full snapshot loads of the local replica (the start, "
                          "and each compaction the watch could not resume across)")
KEEPALIVE_FAILURES = Counter("leasenet_keepalive_failures_total", "Liveness keep-alives that failed (etcd "
                             "unavailable) or found the host's lease lapsed")
VM_RESTARTS = Counter("leasenet_vm_restarts_total", "Producer host: command VMs restarted, by service and reason "
                      "(exit, unhealthy, reset)", ["service", "reason"])
VM_RESTART_TO_READY = Histogram("leasenet_vm_restart_to_ready_seconds", "Producer host: a command VM's restart, "
                                "from its withdrawal to its new incarnation's registration, by service", ["service"],
                                buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))


# --- cached label children for the hot paths ------------------------------------------------------
class Requests:
    """`leasenet_requests_total` and `leasenet_request_duration_seconds` for one process kind, with
    each (service, code) child bound on first use."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._counts: dict[tuple[str, str], Callable[[], None]] = {}
        self._durations: dict[str, Callable[[float], None]] = {}

    def record(self, service: str, code: str, seconds: float | None = None) -> None:
        """One answered request; `seconds` None: it never ran (nothing to time)."""
        inc = self._counts.get((service, code))
        if inc is None:
            inc = self._counts[(service, code)] = REQUESTS.labels(self.kind, service, code).inc
        inc()
        if seconds is not None:
            observe = self._durations.get(service)
            if observe is None:
                observe = self._durations[service] = REQUEST_DURATION.labels(self.kind, service).observe
            observe(seconds)


def call_kind(requests: int, responses: int) -> str:
    """A call's kind as its message counts show it (bounded: four values)."""
    many_up, many_down = requests != 1, responses > 1
    return {(False, False): "unary", (True, False): "client_stream", (False, True): "server_stream",
            (True, True): "bidi"}[(many_up, many_down)]


_CALL_CHILDREN: dict[tuple[str, str, str], tuple[Callable[[], None], Callable[[float], None]]] = {}


def call_done(kind: str, requests: int, responses: int, code: str, seconds: float) -> None:
    """One transparent call ended (leasenet_calls_total, leasenet_call_duration_seconds); the label
    children are bound once (labels() costs more than the count itself)."""
    what = call_kind(requests, responses)
    children = _CALL_CHILDREN.get((kind, what, code))
    if children is None:  # bounded: kinds x 4 call kinds x 17 codes
        children = _CALL_CHILDREN[(kind, what, code)] = (CALLS.labels(kind, what, code).inc,
                                                          CALL_DURATION.labels(kind, what).observe)
    children[0]()
    children[1](seconds)


@dataclass(frozen=True, slots=True)
class EtcdOp:
    requests: Counter
    duration: Histogram
    errors: Counter


_etcd_ops: dict[str, EtcdOp] = {}


def etcd_op(op: str) -> EtcdOp:
    """The three children of one etcd operation (e.g. 'txn', 'lease_keepalive'), bound once."""
    children = _etcd_ops.get(op)
    if children is None:
        children = _etcd_ops[op] = EtcdOp(ETCD_REQUESTS.labels(op), ETCD_DURATION.labels(op), ETCD_ERRORS.labels(op))
    return children


TUNNEL_IN = TUNNEL_FRAMES.labels("in")
TUNNEL_OUT = TUNNEL_FRAMES.labels("out")


def exhausted(kind: str, reason: str) -> None:
    RESOURCE_EXHAUSTED.labels(kind, reason).inc()


RELAYED = "relayed"  # the reason of a refusal passed on from the process that made it (and counted it)


def answered(kind: str, error: LeasenetError) -> None:
    """`error` is about to become process `kind`'s answer: count it if it is RESOURCE_EXHAUSTED, by
    its reason. Called where errors become statuses (wire.rpc.edge_counting, a stream's per-request
    answers), so each refusal counts once however deep it was raised; a RELAYED one was counted by
    the process that made it (a registry's answer forwarded by another)."""
    if error.code is Status.RESOURCE_EXHAUSTED and error.reason != RELAYED:
        RESOURCE_EXHAUSTED.labels(kind, error.reason or "other").inc()


# --- gauges sampled at scrape time ------------------------------------------------------------------
Sample = dict[tuple[str, ...], float]  # label values -> value


@dataclass(frozen=True, slots=True)
class _Source:
    loop: asyncio.AbstractEventLoop
    sample: Callable[[], Sample]


class SampledGauge(Collector):
    """A gauge whose value is read from live state when scraped: each process adds a sampling
    function (`watch`), which runs on that process's event loop (the state is the loop's alone),
    and the samples of every source are summed per label set."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self._sources: list[_Source] = []
        self._lock = threading.Lock()

    def watch(self, sample: Callable[[], Sample]) -> Callable[[], None]:
        """Sample `sample()` at each scrape from now on (call on the event loop); returns the undo."""
        source = _Source(asyncio.get_running_loop(), sample)
        with self._lock:
            self._sources.append(source)

        def unwatch() -> None:
            with self._lock:
                if source in self._sources:
                    self._sources.remove(source)
        return unwatch

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        totals: Sample = {}
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            for labels, value in _sample_on_loop(source).items():
                totals[labels] = totals.get(labels, 0.0) + value
        for labels, value in sorted(totals.items()):
            family.add_metric(list(labels), value)
        yield family


def _sample_on_loop(source: _Source) -> Sample:
    """Run the sampler on its loop: directly when already there, else from the scrape's thread."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is source.loop:
        return source.sample()
    if source.loop.is_closed():
        return {}
    result: concurrent.futures.Future[Sample] = concurrent.futures.Future()

    def run() -> None:
        try:
            result.set_result(source.sample())
        except Exception as exc:  # noqa: BLE001 - handed to the scrape, which skips this source
            result.set_exception(exc)

    try:
        source.loop.call_soon_threadsafe(run)
        return result.result(SAMPLE_TIMEOUT_S)
    except Exception:  # a closed or busy loop, a broken sampler: this scrape goes without it
        return {}


POOL_VMS = SampledGauge("leasenet_pool_vms", "Consumer host: producer VMs in its lease pools, by service",
                        ("service",))
POOL_VMS_IN_USE = SampledGauge("leasenet_pool_vms_in_use", "Consumer host: pool VMs running a request now, by "
                               "service", ("service",))
POOL_WAITERS = SampledGauge("leasenet_pool_waiters", "Consumer host: requests waiting for a pool VM, by service",
                            ("service",))
TUNNEL_STREAMS = SampledGauge("leasenet_tunnel_streams", "Open tunnel streams (consumer host: to producer hosts; "
                              "producer host: from consumer hosts)")
LIVE_HOSTS = SampledGauge("leasenet_live_hosts", "Registry: hosts registered in its replica (their liveness lease "
                          "holds), by kind", ("kind",))
VMS = SampledGauge("leasenet_vms", "Producer host: command and endpoint VMs by life-cycle state (starting, serving, "
                   "backing_off, stopped), by service", ("service", "state"))
for _gauge in (POOL_VMS, POOL_VMS_IN_USE, POOL_WAITERS, TUNNEL_STREAMS, LIVE_HOSTS, VMS):
    REGISTRY.register(_gauge)


# --- off: --metrics-listen empty ------------------------------------------------------------------------
class _Off:
    """Stands in for every recorder when metrics are off: each call does nothing."""

    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass


RECORDERS = ("REQUESTS", "REQUEST_DURATION", "RESOURCE_EXHAUSTED", "LEASE_OPERATIONS", "GRANT_DURATION",
             "GRANT_CONFLICTS", "TUNNEL_FRAMES", "TUNNEL_FRAMES_REJECTED", "TUNNEL_IN", "TUNNEL_OUT", "ETCD_REQUESTS",
             "ETCD_DURATION", "ETCD_ERRORS", "REPLICA_LAG", "REPLICA_RELOADS", "KEEPALIVE_FAILURES",
             "VM_RESTARTS", "VM_RESTART_TO_READY")


def turn_off() -> None:
    """No endpoint, so nothing is recorded: every recorder becomes a no-op (call at start, before
    any is used: children bound earlier keep recording). Sampled gauges cost nothing unscraped."""
    off = _Off()
    for name in RECORDERS:
        globals()[name] = off


# --- the endpoint -------------------------------------------------------------------------------------
class MetricsConfigError(ValueError):
    """A --metrics-listen value that cannot be served; the message is the sentence to print."""


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise MetricsConfigError(f"--metrics-listen {listen!r} is not host:port (e.g. 127.0.0.1:9100; port 0 = any "
                                 "free port; empty = no metrics endpoint)")
    return host.strip("[]"), int(port)


def serve(listen: str, *, kind: str, version: str, event_loop: str) -> str:
    """Serve /metrics on `listen` (host:port) from a daemon thread; returns the bound host:port.
    Also sets `leasenet_build_info`."""
    host, port = parse_listen(listen)
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise MetricsConfigError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    BUILD_INFO.labels(kind, version, event_loop).set(1)
    return f"{host}:{server.server_port}"


# --- reading an endpoint (the demo, the tests) ----------------------------------------------------------
Scraped = dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value) per sample


def scrape(address: str, timeout_s: float = 5.0) -> Scraped:
    """Every sample a /metrics endpoint (host:port) serves now."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    samples: Scraped = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: Scraped, name: str, **labels: str) -> float:
    """The sum of the samples of `name` that carry these label values (0 when none do)."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == want for k, want in labels.items()))

"""wire/metrics.py: cached children record what they are given, sampled gauges read live state on
its own event loop, a bad --metrics-listen gets a sentence, and metrics off records nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest
from prometheus_client import REGISTRY, generate_latest

from leasenet.bench.plans import METRICS_ON, CellResult, LoadResult, make_plan, rounds_of
from leasenet.bench.render import metrics_table
from leasenet.bench.report import speed_targets, summarize_datapath
from tests.conftest import REPO
from wire import metrics


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_requests_are_counted_by_service_and_code_and_timed_only_when_they_ran() -> None:
    requests = metrics.Requests("unit_kind")
    requests.record("svc", "OK", 0.002)
    requests.record("svc", "OK", 0.004)
    requests.record("svc", "DEADLINE_EXCEEDED")  # never ran
    assert sample("leasenet_requests_total", kind="unit_kind", service="svc", code="OK") == 2
    assert sample("leasenet_requests_total", kind="unit_kind", service="svc", code="DEADLINE_EXCEEDED") == 1
    assert sample("leasenet_request_duration_seconds_count", kind="unit_kind", service="svc") == 2
    assert sample("leasenet_request_duration_seconds_sum", kind="unit_kind", service="svc") == pytest.approx(0.006)


def test_a_sampled_gauge_reads_its_state_on_the_event_loop_and_sums_its_sources() -> None:
    gauge = metrics.SampledGauge("leasenet_unit_sampled", "test", ("service",))
    threads: list[int] = []

    def pools() -> metrics.Sample:
        threads.append(threading.get_ident())
        return {("echo",): 3.0}

    async def main() -> tuple[list[object], list[object]]:
        undo = [gauge.watch(pools), gauge.watch(lambda: {("echo",): 2.0, ("kv",): 1.0})]
        # a scrape comes from prometheus_client's HTTP thread while the loop keeps running
        scraped = await asyncio.to_thread(lambda: [s for f in gauge.collect() for s in f.samples])
        for u in undo:
            u()
        return scraped, [s for f in gauge.collect() for s in f.samples]

    loop_thread = threading.get_ident()
    scraped, after = asyncio.run(main())
    assert [(s.labels, s.value) for s in scraped] == [({"service": "echo"}, 5.0), ({"service": "kv"}, 1.0)]
    assert threads == [loop_thread]
    assert after == []


def test_the_registered_gauges_appear_in_the_exposition() -> None:
    text = generate_latest(REGISTRY).decode()
    for name in ("leasenet_pool_vms", "leasenet_pool_vms_in_use", "leasenet_pool_waiters", "leasenet_tunnel_streams",
                 "leasenet_live_hosts"):
        assert f"# TYPE {name} gauge" in text


@pytest.mark.parametrize("listen", ["9100", "localhost", ":9100", "host:port", "127.0.0.1:99999"])
def test_a_metrics_listen_address_that_is_not_host_and_port_gets_a_sentence(listen: str) -> None:
    with pytest.raises(metrics.MetricsConfigError, match=r"is not host:port \(e\.g\. 127\.0\.0\.1:9100"):
        metrics.parse_listen(listen)


def test_metrics_off_records_nothing() -> None:
    code = ("from prometheus_client import REGISTRY; from wire import metrics; metrics.turn_off(); "
            "metrics.Requests('k').record('s', 'OK', 1.0); metrics.etcd_op('get').requests.inc(); "
            "metrics.TUNNEL_IN.inc(5); "
            "print(REGISTRY.get_sample_value('leasenet_requests_total', {'kind': 'k', 'service': 's', 'code': 'OK'}), "
            "REGISTRY.get_sample_value('leasenet_etcd_requests_total', {'op': 'get'}), "
            "REGISTRY.get_sample_value('leasenet_tunnel_frames_total', {'direction': 'in'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["None", "None", "0.0"], out.stderr


def test_the_cli_refuses_a_bad_metrics_listen_in_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "leasenet", "registry", "--insecure", "--etcd-endpoints",
                          "127.0.0.1:1", "--metrics-listen", "nowhere"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1:] == [
        "leasenet: --metrics-listen 'nowhere' is not host:port (e.g. 127.0.0.1:9100; port 0 = any free port; "
        "empty = no metrics endpoint)"]


def test_the_full_bench_runs_the_overlay_with_metrics_on_beside_the_overlay_with_metrics_off_at_c64() -> None:
    full = make_plan(quick=False, runs=1, rounds=4)
    with_metrics = [spec for spec in full.cells if METRICS_ON in spec.targets]
    assert [(s.mode, s.payload, s.concurrency) for s in with_metrics] == [("unary", 100, 64)]
    for rnd in range(4):
        order = [c.target for c in rounds_of(with_metrics[0], full) if c.round == rnd]
        assert abs(order.index(METRICS_ON) - order.index("overlay")) == 1, order
    assert not [s for s in make_plan(quick=True, runs=1).cells if METRICS_ON in s.targets]


def _slices(on_over_off: list[float]) -> LoadResult:
    return LoadResult([s for r, ratio in enumerate(on_over_off) for s in (
        CellResult("overlay", "unary", 100, 64, 0.0, 0.2, r, rps=1000.0, p50_ms=1.0),
        CellResult(METRICS_ON, "unary", 100, 64, 0.0, 0.2, r, rps=1000.0 * ratio, p50_ms=1.0))])


@pytest.mark.parametrize(("ratios", "passes"), [([0.97, 0.99, 0.93, 1.01, 0.96], True),
                                                ([0.90, 0.94, 0.97, 0.92, 0.93], False)])
def test_metrics_pass_the_bench_when_they_cost_at_most_five_percent_of_throughput(ratios: list[float],
                                                                                  passes: bool) -> None:
    verdicts = {t["target"]: t for t in speed_targets(summarize_datapath(_slices(ratios)))}
    target = verdicts[f"{METRICS_ON}/overlay throughput >= 0.95 (unary, 100 B, C=64)"]
    assert (target["pass"], target["value"]) == (passes, sorted(ratios)[2])


def test_the_bench_prints_metrics_on_beside_off_with_their_ratio() -> None:
    rows = summarize_datapath(_slices([0.97, 0.99, 0.93, 1.01, 0.96]))
    header, line = metrics_table(rows).splitlines()[:2]
    assert header.split()[:5] == ["mode", "payload", "C", "metrics", "off"]
    assert line.split()[:7] == ["unary", "100", "B", "64", "1,000", "970", "0.97"]

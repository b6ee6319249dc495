"""The bench's measuring method (issue 13), on made-up slices: alternating rounds, ratios paired
within a round, the median with its distribution-free confidence interval, and the verdicts."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from leasenet.bench.calls import call_targets
from leasenet.bench.measure import CpuMeter, cpu_seconds, median_interval, paired
from leasenet.bench.plans import PLAIN, SELF, CellResult, CellSpec, LoadResult, make_plan, rounds_of
from leasenet.bench.report import self_checks, speed_targets, summarize_datapath


def test_the_interval_of_the_median_is_the_whole_range_until_eight_pairs_can_exclude_an_extreme():
    assert median_interval([3.0, 1.0, 2.0, 4.0]) == (1.0, 4.0, 0.875)
    low, high, coverage = median_interval([float(i) for i in range(1, 9)])
    assert (low, high) == (1.0, 8.0) and coverage == pytest.approx(1 - 2 / 256)
    low, high, coverage = median_interval([float(i) for i in range(1, 13)])
    assert (low, high) == (3.0, 10.0) and coverage >= 0.95


def test_an_interval_of_no_values_is_refused_with_a_sentence():
    with pytest.raises(ValueError, match="no values"):
        median_interval([])


def test_paired_ratios_report_their_median_interval_and_quartiles_and_skip_missing_pairs():
    summary = paired([1.0, 0.9, None, 1.1, float("nan"), 1.05])
    assert summary["n"] == 4 and summary["median"] == 1.025
    assert (summary["low"], summary["high"]) == (0.9, 1.1)
    assert summary["q1"] <= summary["median"] <= summary["q3"]
    assert paired([None])["median"] is None


def test_the_interval_holds_one_for_a_fair_comparison_as_often_as_it_claims():
    rng = random.Random(13)
    held = sum(low <= 1.0 <= high for low, high, _ in
               (median_interval([rng.lognormvariate(0, 0.2) for _ in range(10)]) for _ in range(2000)))
    _, _, coverage = median_interval([float(i) for i in range(10)])
    assert abs(held / 2000 - coverage) < 0.02


def test_each_round_runs_the_targets_the_other_way_round_with_the_overlay_between_the_two_it_is_compared_with():
    plan = make_plan(quick=False, runs=1, rounds=4)
    slices = rounds_of(CellSpec("unary", 100, 64, PLAIN), plan)
    order = [[c.target for c in slices if c.round == r] for r in range(4)]
    assert order == [list(PLAIN), list(PLAIN[::-1])] * 2
    assert all(o[1] == "overlay" for o in order)
    assert {c.check for c in rounds_of(CellSpec("unary", 100, 64, SELF, check=True), plan)} == {True}


def _slice(target: str, rnd: int, rps: float, p50: float, check: bool = False, conc: int = 64) -> CellResult:
    return CellResult(target, "unary", 100, conc, 0.0, 0.2, rnd, check, sent=10, answered=10, ok=10, measured=10,
                      rps=rps, p50_ms=p50, p99_ms=p50 * 2)


def test_ratios_are_taken_within_a_round_so_a_machine_slowing_down_between_rounds_cancels_out():
    # the machine gets twice as slow every round; within a round the overlay is always 0.9 x direct
    slices = []
    for r in range(6):
        speed = 1000 / 2**r
        slices += [_slice("direct", r, speed, 1.0), _slice("overlay", r, speed * 0.9, 1.2),
                   _slice("relay", r, speed * 0.95, 1.1)]
    row, = summarize_datapath(LoadResult(slices))
    assert row["ratios"]["overlay/direct"]["rps"]["median"] == 0.9
    assert row["ratios"]["overlay/direct"]["rps"]["low"] == row["ratios"]["overlay/direct"]["rps"]["high"] == 0.9
    assert row["ratios"]["overlay/relay"]["p50_ms"]["median"] == pytest.approx(1.2 / 1.1, abs=0.001)
    assert "overlay-tls/direct-tls" not in row["ratios"]  # not measured, not reported
    assert row["requests"] == {"direct": 60, "overlay": 60, "relay": 60}


def test_a_speed_target_passes_on_the_median_and_carries_its_interval():
    slices = []
    for r, overlay in enumerate([0.90, 0.97, 0.96, 0.99, 0.70]):  # one bad pair does not flip the median
        slices += [_slice("relay", r, 1000.0, 1.0), _slice("overlay", r, 1000.0 * overlay, 1.0),
                   _slice("direct", r, 1100.0, 1.0)]
    verdicts = {t["target"]: t for t in speed_targets(summarize_datapath(LoadResult(slices)))}
    relay = verdicts["overlay/relay throughput >= 0.95 (unary, 100 B, C=64)"]
    assert relay["pass"] and relay["value"] == 0.96 and (relay["low"], relay["high"]) == (0.7, 0.99)
    direct = verdicts["overlay/direct throughput >= 0.8 (unary, 100 B, C=64)"]
    assert direct["pass"] and direct["value"] == pytest.approx(0.873, abs=0.001)


def test_the_self_check_fails_when_the_method_reads_a_target_against_itself_as_different():
    biased = [s for r in range(8) for s in (_slice("overlay", r, 1000.0, 1.0, True), _slice("overlay-again", r,
                                                                                             1100.0, 1.0, True))]
    checks = {t["target"].split(" = ")[0]: t for t in self_checks(summarize_datapath(LoadResult(biased)))}
    assert not checks["method: overlay/overlay-again throughput"]["pass"]
    assert checks["method: overlay/overlay-again p50"]["pass"]  # equal latencies: exactly 1.00


def test_the_call_bars_list_an_unmeasured_overlay_as_not_measured_and_judge_a_measured_one():
    relay_only = []
    for r in range(4):
        relay_only += [_slice("direct", r, 1000.0, 1.0), _slice("relay", r, 300.0, 3.0)]
    bars = call_targets(summarize_datapath(LoadResult(relay_only)), overlay=False)
    assert bars and all(t["pass"] is None and t["value"] is None and t["note"] for t in bars)
    assert {t["target"] for t in bars} >= {"overlay/relay throughput >= 0.8 (unary, 100 B, C=64)",
                                           "consumer host CPU per call <= 250 us (unary, 100 B, C=64)"}
    with_overlay = relay_only + [replace(_slice("overlay", r, 270.0, 3.3), cpu_us_per_request={
        "consumer host": 200.0, "producer host": 300.0}) for r in range(4)]
    verdicts = {t["target"]: t for t in call_targets(summarize_datapath(LoadResult(with_overlay)), overlay=True)}
    assert verdicts["overlay/relay throughput >= 0.8 (unary, 100 B, C=64)"]["pass"]  # 0.9
    assert verdicts["consumer host CPU per call <= 250 us (unary, 100 B, C=64)"]["pass"]
    assert verdicts["producer host CPU per call <= 250 us (unary, 100 B, C=64)"]["pass"] is False


def test_a_cpu_meter_adds_up_the_processes_one_name_stands_for():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        meter = CpuMeter({"me": os.getpid(), "both": [os.getpid(), busy.pid]})
        meter.begin()
        start = cpu_seconds(busy.pid)
        deadline = time.monotonic() + 30
        while (cpu_seconds(busy.pid) or 0) < (start or 0) + 0.02 and time.monotonic() < deadline:
            sum(range(10_000))  # until the child has run for two clock ticks (more than our reads' skew)
        meter.end()
    finally:
        busy.kill()
        busy.wait()
    assert meter.used["both"] > meter.used["me"]  # the child's seconds, added to ours


def test_a_precise_cpu_meter_reads_the_threads_nanoseconds_and_agrees_with_the_ticks():
    meter = CpuMeter({"me": os.getpid()}, precise=True)
    meter.begin()
    start = cpu_seconds(os.getpid())
    deadline = time.monotonic() + 30
    while (cpu_seconds(os.getpid()) or 0) < (start or 0) + 0.05 and time.monotonic() < deadline:
        sum(range(10_000))  # five clock ticks of our own
    meter.end()
    ticks = (cpu_seconds(os.getpid()) or 0) - (start or 0)
    assert meter.used["me"] != round(meter.used["me"], 2)  # not a whole number of 10 ms ticks
    assert abs(meter.used["me"] - ticks) <= 0.03

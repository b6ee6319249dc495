"""`leasenet bench --quick --json`: the CI smoke test of the benchmark harness. It asserts
correctness only (every request answered, no errors without a fault, no double claims), never
speed: speed is what `leasenet bench` reports, as ratios."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_quick_json_runs_every_step_and_keeps_the_promises(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leasenet", "bench", "--quick", "--json", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)

    correct = report["correctness"]
    assert correct["ok"], correct["problems"]
    assert correct["requests"] > 0 and correct["answered"] == correct["requests"] and correct["errors"] == 0
    assert report["double_claims"] == 0 and report["leasing"]["race_violations"] == []

    # every part of the report is there, for both sides of every cell
    assert report["machine"]["cores"] and report["machine"]["python"] and report["machine"]["grpcio"]
    cells = {(r["mode"], r["payload"], r["concurrency"]) for r in report["datapath"]}
    assert {("unary", 100, 1), ("unary", 100, 16), ("stream", 100, 16)} <= cells
    for row in report["datapath"]:
        for side in ("direct", "overlay"):
            assert row[side]["rps"] > 0 and row["answered"][side] == row["requests"][side]
        assert row["ratio"]["rps"] is not None and row["ratio"]["p50_ms"] is not None
    # the relay floor is measured next to the C=1 latency cell, and every request it relayed came back
    floor = next(r for r in report["datapath"] if (r["mode"], r["payload"], r["concurrency"]) == ("unary", 100, 1))
    assert floor["relay"]["p50_ratio"] > 0 and floor["answered"]["relay"] == floor["requests"]["relay"] > 0
    assert report["etcd"]["service_requests"] > 0 and report["etcd"]["request_path_etcd_requests"] == 0
    leasing = report["leasing"]
    assert leasing["grants_measured"] > 0 and leasing["grant_pool_sizes"] == {"4": leasing["grants_measured"]}
    assert leasing["race_granted"] > 0
    failover = report["failover"]
    assert failover["failover_s"] is not None and failover["unanswered"] == 0
    assert {t["target"] for t in report["targets"]}  # reported, never asserted here


def test_bench_rejects_a_bad_run_count_in_one_line():
    out = subprocess.run([sys.executable, "-m", "leasenet", "bench", "--runs", "0"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["leasenet: --runs must be at least 1"]

"""`leasenet bench --quick --json`: the CI smoke test of the benchmark harness. It asserts
correctness (every request answered, no errors without a fault, no double claims) and the
measuring method's self-check (the overlay against itself reads 1.00 within the interval the
bench reports), never speed: speed is what `leasenet bench` reports, as ratios."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_quick_json_runs_every_step_keeps_the_promises_and_checks_its_method(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leasenet", "bench", "--quick", "--json", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)

    correct = report["correctness"]
    assert correct["ok"], correct["problems"]
    assert correct["requests"] > 0 and correct["answered"] == correct["requests"] and correct["errors"] == 0
    assert report["double_claims"] == 0 and report["leasing"]["race_violations"] == []

    # every part of the report is there: every target of every cell, and the ratios between them
    assert report["machine"]["cores"] and report["machine"]["python"] and report["machine"]["grpcio"]
    assert report["event_loop"].startswith("uvloop")  # a dependency on Linux, used by every process
    compared = [r for r in report["datapath"] if not r["check"]]
    cells = {(r["mode"], r["payload"], r["concurrency"]) for r in compared}
    assert {("unary", 100, 1), ("unary", 100, 16), ("stream", 100, 16)} <= cells
    for row in compared:
        for target in ("direct", "relay", "overlay"):
            assert row["targets"][target]["rps"] > 0
            assert row["answered"][target] == row["requests"][target] > 0
        for pair in ("overlay/direct", "overlay/relay"):
            ratio = row["ratios"][pair]["rps"]
            assert ratio["n"] == report["settings"]["rounds"] and ratio["low"] <= ratio["median"] <= ratio["high"]
    # one cell again with mutual TLS on every hop and on the direct baseline, paired with its plaintext twin
    secure = next(r for r in compared if "overlay-tls" in r["targets"])
    for target in ("direct-tls", "relay-tls", "overlay-tls"):
        assert secure["targets"][target]["rps"] > 0 and secure["answered"][target] == secure["requests"][target]
    assert {"overlay-tls/direct-tls", "overlay-tls/relay-tls", "overlay-tls/overlay"} <= set(secure["ratios"])
    # the method's self-check: the overlay against itself reads 1.00 within the reported interval
    check = next(r for r in report["datapath"] if r["check"])
    for figure in ("rps", "p50_ms"):
        ratio = check["ratios"]["overlay/overlay-again"][figure]
        # (a slice in which a loaded machine answered nothing has no p50, and so its pair no ratio)
        assert ratio["n"] >= report["settings"]["check_rounds"] - 2
        assert ratio["low"] <= 1.0 <= ratio["high"], ratio
    # (measured once more when it did not hold: a burst on a shared machine can tilt every pair once)
    assert report["method"]["ok"] and report["method"]["checks"] == 2 and report["method"]["measured"] in (1, 2)
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

"""`leasenet bench --scale --quick --json`: the scale section runs alone on a small cluster and
reports every figure; it asserts correctness (every pool held, no errors, no double claims), never
speed: the speed targets are what the full `leasenet bench --scale` reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_scale_quick_json_holds_every_pool_and_reports_every_figure(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leasenet", "bench", "--scale", "--quick", "--json",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    plan = report["settings"]

    assert report["machine"]["cores"] and report["registration_s"] > 0
    assert report["registration_vms"] == plan["producer_hosts"] * plan["vms_per_host"]
    assert report["snapshot"]["keys"] > report["registration_vms"] and report["snapshot"]["p50_ms"] > 0
    assert {"r1", "r2", "c1", "p1", "etcd"} <= set(report["rss_mib"]) and all(report["rss_mib"].values())
    assert report["held"]["held"] == plan["pools"] and report["held"]["errors"] == {}
    assert (report["small"]["vms"], report["big"]["vms"]) == (plan["small_vms"], report["registration_vms"])
    rounds = plan["fleet_rounds"]
    for fleet, times in ((report["small"], rounds), (report["big"], rounds), (report["big_with_pools"], 1)):
        assert fleet["grants"] == plan["grants"] * times and fleet["grant_failures"] == {}
        assert fleet["grant_p50_ms"] > 0 and fleet["request_p50_ms"] > 0 and fleet["request_errors"] == {}
    # the fleets alternated: a ratio and a registration per round, every VM of each fleet seen each time
    assert len(report["grant_p50_ratios"]) == len(report["request_p50_ratios"]) == len(report["registrations_s"]) == rounds
    assert [r["vms"] for r in report["small"]["rounds"] + report["big"]["rounds"]] == \
        [plan["small_vms"]] * rounds + [report["registration_vms"]] * rounds
    assert report["grant_p50_ratio"] > 0 and report["request_p50_ratio"] > 0
    assert report["keep_alive"]["pools"] == plan["pools"] and report["keep_alive"]["requests_per_s"] > 0
    contended = report["contended"]
    assert contended["grants"] > 0 and contended["errors"] == {} and report["double_claims"] == 0
    churn = report["churn"]
    assert churn["cycles"] > 0 and churn["grants_per_s"] > 0 and churn["errors"] == {}
    assert set(churn["cpu_ms_per_cycle"]) == {"etcd", "registries", "a consumer host", "a producer host"}
    assert churn["cpu_ms_per_cycle"]["registries"] > 0 and churn["cpu_ms_per_cycle"]["etcd"] > 0
    assert len(churn["db_size_mib"]) == 5 and all(size > 0 for size in churn["db_size_mib"])

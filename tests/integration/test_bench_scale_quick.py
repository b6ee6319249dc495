"""`leasenet bench --scale --quick --json`: the scale section runs alone on a small cluster and
reports every figure and every target of issue 19; it asserts correctness (every pool held, no
errors, no double claims on the claim history), never speed: the speed targets are what the full
`leasenet bench --scale` reports."""

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
    keep = report["keep_alive"]
    assert keep["pools"] == plan["pools"] and keep["hosts"]["requests_per_s"] > 0
    assert keep["hosts"]["per_method"].get("LeaseKeepAlive", 0) > 0 and keep["pools_requests_per_s"] is not None
    contended = report["contended"]
    assert contended["grants"] > 0 and contended["errors"] == {} and report["double_claims"] == 0
    churn = report["churn"]
    assert churn["cycles"] > 0 and churn["grants_per_s"] > 0 and churn["errors"] == {}
    assert churn["concurrency"] == plan["grants_in_flight"] and sum(lane["grants"] for lane in churn["lanes"]) == \
        churn["cycles"]
    # the checker read the churn's claim history: a claim and a release per VM of every pool granted
    assert churn["claim_lines"] >= 2 * churn["cycles"] and contended["claim_lines"] > 0
    cpu = churn["cpu_ms_per_cycle"]
    assert set(cpu) == {"etcd", "registries", "party consumer host", "non-party consumer host",
                        "party producer host", "non-party producer host", "client"}
    assert cpu["registries"] > 0 and cpu["etcd"] > 0 and all(v is not None for v in cpu.values())
    assert len(churn["db_size_mib"]) == 5 and all(size > 0 for size in churn["db_size_mib"])
    # etcd's watch events per grant at each fan-out size, from a fleet that grew by light hosts
    fan = report["watch_fanout"]
    assert [size["hosts"] for size in fan["sizes"]] == plan["watch_hosts"]
    assert fan["sizes"][0]["watchers"] < fan["sizes"][-1]["watchers"]
    assert all(size["grants"] > 0 and size["events_per_grant"] > 0 and not size["errors"] for size in fan["sizes"])
    assert fan["growth"] > 0
    # every target of issue 19 is reported with its value; --quick asserts correctness, not speed
    targets = {t["target"]: t for t in report["targets"]}
    assert len(targets) == 11 and all({"value", "limit", "pass"} <= set(t) for t in targets.values())
    assert next(t for name, t in targets.items() if name.startswith("double claims"))["pass"] is True
    assert sum(t["pass"] for name, t in targets.items() if "registered" in name or "held" in name) == 2

"""What `bench --scale` concludes (bench.scalereport), on made-up figures: each process's CPU net
of its idle rate, divided between the cycles it was party to and those it was not, and issue 19's
targets with their verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from leasenet.bench.scalereport import (
    CONSUMER, ETCD, PRODUCER, REGISTRY, Party, cycle_cpu, growth, net_cpu, non_party_share, scale_targets,
)

BOTH = frozenset({0, 1})


def test_the_idle_rate_is_taken_off_and_a_process_idler_than_at_rest_spent_nothing():
    net = net_cpu({"c1": 3.0, "c2": 0.5}, {"c1": 0.1, "c2": 0.1}, window_s=10)
    assert net == pytest.approx({"c1": 2.0, "c2": 0.0})


def test_a_host_party_to_one_lane_is_charged_the_non_party_rate_for_the_other_lanes_cycles():
    # 1,000 cycles, 400 in lane 0 and 600 in lane 1; producer hosts not party to any spend 0.1 ms a
    # cycle, the producer host of lane 0 spends 2 ms on each of its own and 0.1 ms on each of lane 1's
    parties = {"etcd": Party(ETCD), "r1": Party(REGISTRY), "r2": Party(REGISTRY),
               "c-churn": Party(CONSUMER, BOTH), "c1": Party(CONSUMER),
               "p-a": Party(PRODUCER, frozenset({0})), "p1": Party(PRODUCER), "p2": Party(PRODUCER)}
    net = {"etcd": 4.0, "r1": 1.0, "r2": 1.5, "c-churn": 0.5, "c1": 0.0,
           "p-a": 400 * 0.002 + 600 * 0.0001, "p1": 0.1, "p2": 0.1}
    cpu = cycle_cpu(net, parties, [400, 600])
    assert cpu == pytest.approx({"etcd": 4.0, "registries": 2.5, "party consumer host": 0.5,
                                 "non-party consumer host": 0.0, "party producer host": 2.0,
                                 "non-party producer host": 0.1})
    assert non_party_share(cpu) == pytest.approx({CONSUMER: 0.0, PRODUCER: 5.0})


def test_no_cycle_or_no_party_host_leaves_the_figures_out_instead_of_dividing_by_zero():
    assert cycle_cpu({"p1": 1.0}, {"p1": Party(PRODUCER)}, [0, 0]) == {}
    cpu = cycle_cpu({"p1": 1.0}, {"p1": Party(PRODUCER)}, [10])
    assert cpu["party producer host"] is None and cpu["registries"] is None
    assert non_party_share(cpu) == {CONSUMER: None, PRODUCER: None}


def test_watch_events_growth_is_the_largest_fleet_over_the_smallest():
    assert growth([{"events_per_grant": 40.0}, {"events_per_grant": 42.0}]) == 1.05
    assert growth([{"events_per_grant": 40.0}]) is None
    assert growth([{"events_per_grant": 0}, {"events_per_grant": 3.0}]) is None


def report(**changes: Any) -> dict[str, Any]:
    """A report as run_scale makes it, with only what the targets read."""
    r: dict[str, Any] = {
        "settings": {"consumer_hosts": 4, "producer_hosts": 10, "vms_per_host": 1000, "pools": 2000},
        "churn": {"non_party_pct": {CONSUMER: 0.5, PRODUCER: 1.0}, "cpu_ms_per_cycle": {"registries": 2.0},
                  "grants_per_s": 320.0, "concurrency": 64},
        "watch_fanout": {"sizes": [{"hosts": 10, "events_per_grant": 40.0}, {"hosts": 40, "events_per_grant": 41.0}],
                         "growth": 1.025},
        "keep_alive": {"pools": 2000, "pools_requests_per_s": 0.3, "hosts": {"requests_per_s": 20.0}},
        "double_claims": 0, "big": {"vms": 10000}, "small": {"vms": 100}, "held": {"held": 2000, "errors": {}},
        "grant_p50_ratio": 1.05, "request_p50_ratio": 0.98}
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = r
        for name in parents:
            node = node[name]
        node[leaf] = value
    return r


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    return {t["target"].split(" (")[0]: t["pass"] for t in scale_targets(r)}


def test_every_target_of_issue_19_passes_on_a_report_that_meets_them():
    found = scale_targets(report())
    assert len(found) == 11 and all(t["pass"] for t in found)
    assert all({"target", "value", "limit", "pass"} <= set(t) for t in found)


@pytest.mark.parametrize("change, failing", [
    ({"churn__non_party_pct": {CONSUMER: 2.5, PRODUCER: 1.0}}, "a consumer host not party"),
    ({"churn__non_party_pct": {CONSUMER: 0.5, PRODUCER: None}}, "a producer host not party"),
    ({"watch_fanout__growth": 3.4}, "etcd watch events sent per grant"),
    ({"keep_alive__pools_requests_per_s": 200.0}, "etcd requests/s keeping"),
    ({"churn__cpu_ms_per_cycle": {"registries": 7.45}}, "registries' CPU"),
    ({"churn__grants_per_s": 59.6}, ">= 300 grants/s"),
    ({"double_claims": 1}, "double claims"),
    ({"big__vms": 9999}, "10,000 VMs"),
    ({"held__errors": {"UNAVAILABLE": 1}}, "2,000 pools"),
    ({"grant_p50_ratio": 1.3}, "grant p50"),
    ({"request_p50_ratio": None}, "request p50"),
])
def test_each_target_fails_on_its_own_figure(change: dict[str, Any], failing: str):
    failed = [name for name, ok in verdicts(report(**change)).items() if not ok]
    assert len(failed) == 1 and failed[0].startswith(failing), failed


def test_unfloored_a_process_idler_than_at_rest_shows_how_far_the_background_spreads():
    assert net_cpu({"c1": 0.5}, {"c1": 0.1}, window_s=10, floor=False) == pytest.approx({"c1": -0.5})

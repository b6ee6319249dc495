"""SPEC §4 and §6 under faults: a whole cluster as separate processes, a fixed load of idempotent
and non-idempotent requests, faults on a schedule, and the history checker's verdict.

Asserted: no request without exactly one outcome, no violation of any invariant, no failed request
while one etcd member of three is down. The recovery times are printed in the figure table (CI
machines are too noisy to assert them tightly)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from leasenet.checker import NS, Recording, Request
from tests.chaos.conftest import TABLES
from tests.chaos.harness import Scenario, Step, run_scenario

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

# One fault of each kind on each kind of process: SIGKILL (then start again), SIGSTOP/SIGCONT,
# restart (SIGTERM: drain, then start). Holds are longer than the liveness TTL (3 s) where the
# fault must be detected by the lease lapsing.
SINGLE_ETCD = Scenario("1 etcd member", etcd_members=1, requests=12_000, rate=200, steps=[
    Step(0.05, "producer", "sigkill", "producer1", hold_s=1.5),
    Step(0.13, "producer", "sigstop", "producer2", hold_s=4.5),
    Step(0.23, "producer", "restart", "producer3"),
    Step(0.30, "consumer", "sigkill", "consumer2", hold_s=1.0),
    Step(0.38, "consumer", "sigstop", "consumer1", hold_s=4.0),
    Step(0.45, "consumer", "restart", "consumer1"),
    Step(0.52, "registry", "sigkill", "registry1", hold_s=1.5),
    Step(0.59, "registry", "sigstop", "registry2", hold_s=4.0),
    Step(0.66, "registry", "restart", "registry1"),
    Step(0.73, "etcd", "sigkill", "etcd0", hold_s=4.0),
    Step(0.82, "etcd", "sigstop", "etcd0", hold_s=2.0),
    Step(0.90, "etcd", "restart", "etcd0"),
])

THREE_ETCD = Scenario("3 etcd members", etcd_members=3, requests=6_000, rate=200, steps=[
    Step(0.10, "etcd", "sigkill", "etcd0", hold_s=2.0),
    Step(0.30, "etcd", "sigstop", "etcd1", hold_s=2.0),
    Step(0.50, "etcd", "restart", "etcd2"),
    Step(0.70, "producer", "sigkill", "producer2", hold_s=1.0),
])


@pytest.mark.parametrize("scenario", [SINGLE_ETCD, THREE_ETCD], ids=["etcd1", "etcd3"])
def test_every_request_gets_one_outcome_and_no_invariant_breaks(scenario: Scenario) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"leasenet-chaos-{scenario.etcd_members}-"))
    outcome = run_scenario(workdir, scenario)
    TABLES.append(outcome.table)
    report = outcome.report
    assert report.requests == scenario.requests
    assert report.lost == 0, outcome.table
    assert report.violations == [], f"{outcome.table}\n(histories and logs in {workdir})"
    if scenario.etcd_members == 3:  # SPEC §6: one etcd member of three killed, no request fails
        assert failed_during(outcome.history, "etcd") == [], outcome.table
    # the target is p50 < 1 s (see the table); asserted loosely, CI machines are noisy, but a
    # failover that waits for the liveness lease to lapse (3 s) would not pass
    for rec in report.recoveries:
        if rec.fault.name == "producer sigkill" and rec.p50 is not None:
            assert rec.p50 < 2.0, outcome.table
    shutil.rmtree(workdir, ignore_errors=True)  # kept when anything above failed


def failed_during(history: Recording, kind: str, after_heal_s: float = 1.0) -> list[Request]:
    """Requests sent while a fault of this kind was on (until shortly after its heal) that failed."""
    windows = [(f.at_ns, (f.healed_ns or f.at_ns) + int(after_heal_s * NS)) for f in history.faults if f.kind == kind]
    return [r for r in history.requests if r.outcome is not None and r.outcome.status != "OK"
            and any(start <= r.sent_ns <= end for start, end in windows)]

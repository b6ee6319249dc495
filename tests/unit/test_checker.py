"""The history checker is itself tested: hand-made histories, each with one broken promise, and a
clean one that must pass."""

from __future__ import annotations

import json
from pathlib import Path

from leasenet.checker import (
    NS,
    ClaimLog,
    ClaimSpan,
    Execution,
    Fault,
    Outcome,
    PoolSpan,
    Recording,
    Report,
    Request,
    check,
    claims_from_lines,
    double_leases,
    executions_from_vm_lines,
    load,
    recovered_after,
    render,
    requests_from_call_lines,
)

S = NS  # one second in the histories' nanoseconds


def req(rid: int, *, vm: str = "blue/10.1.0.1", idempotent: bool = False, sent: float = 1.0,
        outcomes: tuple[tuple[str, float], ...] = (("OK", 1.1),)) -> Request:
    return Request(rid, vm, idempotent, int(sent * S), tuple(Outcome(code, int(t * S)) for code, t in outcomes))


def run(rid: int, *, vm: str = "blue/10.1.1.1", start: float = 1.0, end: float = 1.05, token: int = 10,
        consumer: str = "blue/10.1.0.1") -> Execution:
    return Execution(vm, rid, consumer, token, int(start * S), int(end * S), True)


def claim(vm: str = "blue/10.1.1.1", token: int = 10, *, lease: str = "a", consumer_vm: str = "blue/10.1.0.1",
          consumer_host: str = "c1", seen: float = 0.5, ended: int | None = None, ended_at: float | None = None,
          producer_host: str = "p1") -> ClaimSpan:
    return ClaimSpan(vm, token, lease, consumer_vm, consumer_host, int(seen * S), ended,
                     None if ended_at is None else int(ended_at * S), producer_host)


def pool(lease: str = "a", revision: int = 9, *, consumer_vm: str = "blue/10.1.0.1", consumer_host: str = "c1",
         ended: int | None = None, ended_at: float | None = None) -> PoolSpan:
    return PoolSpan(lease, consumer_vm, consumer_host, revision, int(0.4 * S), ended,
                    None if ended_at is None else int(ended_at * S))


def clean() -> Recording:
    return Recording(requests=[req(1), req(2, sent=2.0, outcomes=(("UNAVAILABLE", 2.2),)), req(3, sent=3.0,
                                                                                            outcomes=(("OK", 3.1),))],
                   executions=[run(1), run(3, start=3.0, end=3.05)], claims=[claim()], pools=[pool()], faults=[])


def kinds(report: Report) -> list[str]:
    return [v.kind for v in report.violations]


def test_a_clean_history_passes_with_its_figures() -> None:
    report = check(clean(), lease_ttl_s=3, idle_release_s=30)
    assert kinds(report) == []
    assert (report.requests, report.ok, report.errors_by_code, report.lost) == (3, 2, {"UNAVAILABLE": 1}, 0)
    assert "lost 0" in render("clean", report) and "violations 0" in render("clean", report)


def test_a_double_lease_is_caught() -> None:
    h = clean()
    # the same VM claimed for another consumer VM while the first claim was still alive
    h.claims.append(claim(token=12, lease="b", consumer_vm="blue/10.1.0.2", seen=0.6))
    assert kinds(check(h)) == ["double-lease"]
    # after the first claim ended (revision 11 < 12) the second one is fine
    h.claims[0] = claim(ended=11, ended_at=0.55)
    h.pools[0] = pool(ended=11, ended_at=0.55)  # (its whole lease ended)
    assert kinds(check(h)) == []


def test_a_claim_that_changed_hands_in_place_is_caught() -> None:
    h = clean()
    h.claims.append(claim(lease="b", consumer_vm="blue/10.1.0.2"))  # same token, another lessee
    assert "claim-changed" in kinds(check(h))


def test_an_overlapping_execution_is_caught() -> None:
    h = clean()
    h.executions.append(run(3, start=1.02, end=1.2))  # starts while request 1 still runs on the VM
    assert "overlap" in kinds(check(h))
    # one that nests inside a long earlier run is caught too, not only neighbours
    nested = [run(1, start=1.0, end=2.0), run(2, start=1.1, end=1.2), run(3, start=1.5, end=1.6)]
    assert kinds(check(Recording([], nested, [], [], []))).count("overlap") == 2


def test_a_lost_request_is_caught() -> None:
    h = clean()
    h.requests.append(req(4, sent=4.0, outcomes=()))  # sent, never answered
    report = check(h)
    assert kinds(report) == ["lost"] and report.lost == 1


def test_a_request_with_two_outcomes_is_caught() -> None:
    h = clean()
    h.requests.append(req(4, outcomes=(("OK", 1.1), ("UNAVAILABLE", 1.2))))
    h.executions.append(run(4, start=1.2, end=1.25))
    assert kinds(check(h)) == ["duplicate-outcome"]


def test_a_non_idempotent_request_run_twice_is_caught_an_idempotent_one_is_not() -> None:
    h = clean()
    h.executions.append(run(1, vm="blue/10.1.1.2", start=1.0, end=1.05, token=11))
    assert kinds(check(h)) == ["executed-twice", "foreign-claim"]  # and the second VM had no claim for it
    h.requests[0] = req(1, idempotent=True)
    h.claims.append(claim(vm="blue/10.1.1.2", token=11))
    assert kinds(check(h)) == []


def test_an_execution_under_another_consumers_claim_is_caught() -> None:
    h = clean()
    h.executions[0] = run(1, consumer="blue/10.1.0.9")
    assert "foreign-claim" in kinds(check(h))


def test_an_ok_answer_that_no_vm_ran_is_caught() -> None:
    h = clean()
    h.executions.pop()
    assert kinds(check(h)) == ["ok-not-run"]


def test_leases_of_a_killed_consumer_host_must_end_within_ttl_plus_one_second() -> None:
    kill = Fault("consumer", "sigkill", "c1", at_ns=2 * S, healed_ns=10 * S, recover_from="heal")
    h = clean()
    h.faults.append(kill)
    h.claims[0] = claim(ended=20, ended_at=5.5)  # TTL 3 s + 1 s after the kill at 2 s is 6 s
    assert kinds(check(h, lease_ttl_s=3)) == []
    h.claims[0] = claim(ended=20, ended_at=6.5)
    assert kinds(check(h, lease_ttl_s=3)) == ["lease-not-freed"]
    h.claims[0] = claim()  # never freed, and watched long enough to know
    assert kinds(check(h, lease_ttl_s=3, observed_until_ns=12 * S)) == ["lease-not-freed"]
    assert kinds(check(h, lease_ttl_s=3, observed_until_ns=5 * S)) == []  # too early to tell


def test_a_lease_lost_without_a_fault_on_its_consumer_host_is_caught() -> None:
    h = clean()
    h.pools[0] = pool(ended=30, ended_at=3.05)  # its consumer VM was busy until then
    h.claims[0] = claim(ended=30, ended_at=3.05)
    assert kinds(check(h, idle_release_s=30)) == ["lease-lost"]
    h.faults.append(Fault("consumer", "sigstop", "c1", at_ns=1 * S, healed_ns=5 * S))  # expired while stopped
    assert kinds(check(h, idle_release_s=30)) == []
    h.faults.clear()
    assert kinds(check(h, idle_release_s=0.04)) == []  # idle long enough: released, not lost


def test_a_member_taken_from_a_live_pool_without_a_fault_is_caught() -> None:
    h = clean()
    h.claims[0] = claim(ended=15, ended_at=2.5)  # the pool lives on
    assert kinds(check(h)) == ["member-lost"]
    h.faults.append(Fault("producer", "sigkill", "p1", at_ns=2 * S, healed_ns=3 * S))  # its host died
    assert kinds(check(h)) == []


def test_recovery_is_measured_per_affected_vm_from_the_fault_or_its_heal() -> None:
    h = Recording([req(1, sent=1.0, outcomes=(("UNAVAILABLE", 1.1),)), req(2, sent=1.2, outcomes=(("OK", 1.5),)),
                 req(3, vm="blue/10.1.0.2", sent=1.3, outcomes=(("OK", 1.35),)),
                 req(4, vm="blue/10.1.0.3", sent=1.3, outcomes=(("UNAVAILABLE", 1.4),))], [], [], [],
                [Fault("producer", "sigkill", "p1", at_ns=1 * S, affects=("blue/10.1.0.1", "blue/10.1.0.2"))])
    [rec] = check(h).recoveries
    assert sorted(round(s, 3) for s in rec.seconds) == [0.35, 0.5] and round(rec.max or 0, 3) == 0.5
    h.faults[0] = Fault("consumer", "sigkill", "c1", at_ns=1 * S, healed_ns=int(1.25 * S), recover_from="heal",
                        affects=("blue/10.1.0.1",))
    [rec] = check(h).recoveries
    assert rec.seconds == ()  # request 2 was sent before the heal: not counted
    h.faults[0] = Fault("registry", "sigkill", "r1", at_ns=1 * S)  # affects every VM
    report = check(h)
    assert report.recoveries[0].unrecovered == ("blue/10.1.0.3",) and "unrecovered" in kinds(report)


def test_histories_are_read_from_json_lines_even_cut_short(tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"event": "sent", "request_id": 1, "vm": "blue/10.1.0.1", "idempotent": False, "sent_ns": 1},
        {"event": "outcome", "request_id": 1, "vm": "blue/10.1.0.1", "idempotent": False, "sent_ns": 1,
         "status": "OK", "message": "", "done_ns": 2},
        {"event": "sent", "request_id": 2, "vm": "blue/10.1.0.1", "idempotent": True, "sent_ns": 3},
    ]) + '\n{"event": "outc')
    recorded = tmp_path / "claims.jsonl"
    recorded.write_text("\n".join(json.dumps(r) for r in [
        {"event": "pool-granted", "lease_id": "a", "consumer_vm": "blue/10.1.0.1", "consumer_host": "c1",
         "revision": 5, "seen_ns": 1},
        {"event": "claimed", "vm": "blue/10.1.1.1", "token": 5, "lease_id": "a", "consumer_vm": "blue/10.1.0.1",
         "consumer_host": "c1", "producer_host": "p1", "revision": 5, "seen_ns": 1},
        {"event": "released", "vm": "blue/10.1.1.1", "token": 5, "revision": 9, "seen_ns": 4},
        {"event": "pool-ended", "lease_id": "a", "revision": 9, "seen_ns": 4},
    ]) + "\n")
    h = load([requests], [tmp_path / "missing.jsonl"], [recorded])
    assert [(r.request_id, len(r.outcomes)) for r in h.requests] == [(1, 1), (2, 0)]
    assert h.claims == [ClaimSpan("blue/10.1.1.1", 5, "a", "blue/10.1.0.1", "c1", 1, 9, 4, "p1")]
    assert h.pools == [PoolSpan("a", "blue/10.1.0.1", "c1", 5, 1, 9, 4)]
    assert check(h).lost == 1


def test_a_claim_that_served_two_consumer_vms_is_caught_from_executions_alone() -> None:
    shared = [run(1), run(2, start=2.0, end=2.05, consumer="blue/10.1.0.2")]  # one token, two consumers
    assert kinds(check(Recording([], shared, [], [], []))) == ["claim-shared"]
    assert kinds(check(Recording([], [run(1), run(2, start=2.0, end=2.05, token=11)], [], [], []))) == []


def test_lease_events_become_claims_that_catch_a_vm_in_two_leases_at_once() -> None:
    log = ClaimLog()
    log.update("a", "10.1.0.1", "c1", {"blue/10.1.1.1": 5}, revision=5, ended=False, seen_ns=1)
    log.update("a", "10.1.0.1", "c1", {"blue/10.1.1.1": 5}, revision=6, ended=True, seen_ns=2)
    log.update("b", "10.1.0.2", "c1", {"blue/10.1.1.1": 7}, revision=7, ended=False, seen_ns=3)
    assert double_leases(claims_from_lines(log.lines)) == [] and log.leases == {"a", "b"}
    log.update("c", "10.1.0.3", "c1", {"blue/10.1.1.1": 8}, revision=8, ended=False, seen_ns=4)  # b still holds it
    assert [v.kind for v in double_leases(claims_from_lines(log.lines))] == ["double-lease"]


def test_a_member_leaving_a_live_lease_is_released_at_that_events_revision() -> None:
    log = ClaimLog()
    log.update("a", "10.1.0.1", "c1", {"blue/10.1.1.1": 5, "blue/10.1.1.2": 5}, revision=5, ended=False, seen_ns=1)
    log.update("a", "10.1.0.1", "c1", {"blue/10.1.1.2": 5}, revision=9, ended=False, seen_ns=2)
    [gone, kept] = sorted(claims_from_lines(log.lines), key=lambda c: c.vm)
    assert (gone.vm, gone.ended_revision, kept.ended_revision) == ("blue/10.1.1.1", 9, None)


def test_recovery_per_vm_leaves_out_vms_that_sent_nothing_after_the_moment() -> None:
    requests = [req(1, sent=1.0, outcomes=(("UNAVAILABLE", 1.1),)), req(2, sent=1.2, outcomes=(("OK", 1.5),)),
                req(3, vm="blue/10.1.0.2", sent=1.3, outcomes=(("UNAVAILABLE", 1.4),)),
                req(4, vm="blue/10.1.0.3", sent=0.5)]
    after = recovered_after(requests, 1 * S, ["blue/10.1.0.1", "blue/10.1.0.2", "blue/10.1.0.3"])
    assert {vm: None if s is None else round(s, 3) for vm, s in after.items()} == {"blue/10.1.0.1": 0.5,
                                                                                     "blue/10.1.0.2": None}


def vm_line(vm: str, claim: int, start: float, end: float, code: str = "OK") -> dict[str, object]:
    """A line of a VM's own record (examples/notebook --history)."""
    return {"vm": vm, "method": "/notebook.v1.Notebook/Put", "claim": str(claim), "start_ns": int(start * S),
            "end_ns": int(end * S), "code": code}


def test_the_vms_own_records_catch_overlapping_calls_and_claims_never_granted() -> None:
    ok = executions_from_vm_lines([vm_line("blue/10.1.1.1", 10, 1.0, 1.1), vm_line("blue/10.1.1.1", 10, 1.2, 1.3)])
    assert kinds(check(Recording([], [], [claim()], [], [], vm_calls=ok))) == []
    overlapping = ok + executions_from_vm_lines([vm_line("blue/10.1.1.1", 10, 1.25, 1.4)])
    assert kinds(check(Recording([], [], [claim()], [], [], vm_calls=overlapping))) == ["overlap"]
    stale = ok + executions_from_vm_lines([vm_line("blue/10.1.1.1", 7, 2.0, 2.1)])  # a claim the VM never had
    assert kinds(check(Recording([], [], [claim()], [], [], vm_calls=stale))) == ["foreign-claim"]


def test_a_call_workload_is_read_as_requests_with_one_outcome_each() -> None:
    lines = [{"event": "ready", "vm": "blue/10.1.0.1"},
             {"event": "call", "vm": "blue/10.1.0.1", "method": "Put", "start_ns": S, "end_ns": 2 * S, "code": "OK"},
             {"event": "call", "vm": "blue/10.1.0.1", "method": "Get", "start_ns": 3 * S, "end_ns": 4 * S,
              "code": "UNAVAILABLE", "details": "delivery unknown"}]
    requests = requests_from_call_lines(lines)
    assert [(r.vm, r.outcome.status if r.outcome else None) for r in requests] == [
        ("blue/10.1.0.1", "OK"), ("blue/10.1.0.1", "UNAVAILABLE")]
    assert check(Recording(requests, [], [], [], [])).errors_by_code == {"UNAVAILABLE": 1}

"""The history checker: pure functions over what a run recorded, reporting every broken promise of
SPEC §4 and §6 and the figures of the run. The one checker of the demo, bench, chaos and docker tests.

Inputs (each a list of JSON lines; any may be missing):
- requests   (`leasenet traffic --history`): a "sent" and an "outcome" line per request;
- executions (`producer-host --history`): one line per run of a request on a producer VM; or the
             VMs' own records of the calls they ran (a command VM's `--history`, e.g. the notebook
             example's: vm, method, claim, start_ns, end_ns, code), read by `executions_from_vm_lines`;
- calls      (a workload of gRPC calls through VIP endpoints, examples/notebook/workload.py): one
             "call" line per call with its outcome, read by `requests_from_call_lines`;
- claims     (a recorder following etcd, or `ClaimLog` following a registry's lease events):
             "claimed" / "released" lines per claim and "pool-granted" / "pool-ended" lines per
             lease, with their etcd revisions;
- faults     (the chaos harness): what was done to which process, when, and when it was healed.
Times are time.monotonic_ns() of one machine, so lines of different processes compare.

Violations reported:
- lost:            a request sent with no outcome;  duplicate-outcome: one with more than one;
- double-lease:    a producer VM with two claims alive at once (in two pools at once);
- claim-changed:   one claim (one fencing token) naming two different lessees;
- overlap:         two executions on one producer VM overlapping in time (as its host or VM recorded);
- executed-twice:  a non-idempotent request run more than once;
- foreign-claim:   an execution under a claim of another consumer VM, or one never granted (also
                   from the VMs' own records: a call a VM ran under a claim never granted on it);
- claim-shared:    one claim (one fencing token) that served two consumer VMs (needs executions only);
- ok-not-run:      a request answered OK that no producer VM ran (needs executions);
- lease-not-freed: claims of a SIGKILLed consumer host still held TTL + 1 s after it died;
- lease-lost:      a pool that ended although its consumer VM was busy and its host was fine
                   (an agent or etcd fault must not cost a lease);
- member-lost:     a producer VM taken out of a live pool although neither its producer host nor
                   the pool's consumer host had a fault (e.g. a claim collector gone wrong);
- unrecovered:     a consumer VM that never got an OK answer again after a fault.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

NS = 1_000_000_000
OK = "OK"


# --- records -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Execution:
    """One run of a request on a producer VM, as its producer host recorded it (--history)."""

    vm: str
    request_id: int
    consumer: str
    token: int
    start_ns: int
    end_ns: int
    ok: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    done_ns: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int
    vm: str  # the consumer VM that sent it (network/address)
    idempotent: bool
    sent_ns: int
    outcomes: tuple[Outcome, ...] = ()
    consumer_host: str = ""

    @property
    def outcome(self) -> Outcome | None:
        return self.outcomes[0] if len(self.outcomes) == 1 else None


@dataclass(frozen=True, slots=True)
class ClaimSpan:
    """One claim from its creation (revision = fencing token) to its deletion, if seen."""

    vm: str
    token: int
    lease_id: str
    consumer_vm: str
    consumer_host: str
    seen_ns: int
    ended_revision: int | None = None
    ended_ns: int | None = None
    producer_host: str = ""  # the host running the VM when it was claimed


@dataclass(frozen=True, slots=True)
class PoolSpan:
    """One lease (pool record) from its grant to its end (release or expiry), if seen."""

    lease_id: str
    consumer_vm: str
    consumer_host: str
    revision: int
    seen_ns: int
    ended_revision: int | None = None
    ended_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # producer | consumer | registry | etcd
    action: str  # sigkill | sigstop | restart
    target: str
    at_ns: int
    healed_ns: int | None = None
    # measure recovery from the fault, or from its heal (a process that must come back first)
    recover_from: str = "fault"
    affects: tuple[str, ...] = ()  # consumer VMs hit by it; () = all

    @property
    def name(self) -> str:
        return f"{self.kind} {self.action}"


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Recovery:
    fault: Fault
    seconds: tuple[float, ...]  # one per affected consumer VM that recovered
    unrecovered: tuple[str, ...]  # affected VMs that sent requests after it but never got an OK

    @property
    def p50(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def max(self) -> float | None:
        return max(self.seconds) if self.seconds else None


@dataclass(frozen=True, slots=True)
class Report:
    requests: int
    ok: int
    errors_by_code: dict[str, int]
    lost: int
    violations: list[Violation] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(self.errors_by_code.values())


# --- reading -------------------------------------------------------------------------------------
def read_lines(paths: Iterable[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        if not Path(path).exists():
            continue
        for line in Path(path).read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by SIGKILL
            if isinstance(record, dict):
                out.append(record)
    return out


def executions_from_lines(lines: Iterable[dict[str, Any]]) -> list[Execution]:
    out = []
    for line in lines:
        try:
            out.append(Execution(**line))
        except TypeError:
            continue  # not an execution line
    return out


def executions_from_vm_lines(lines: Iterable[dict[str, Any]]) -> list[Execution]:
    """The VMs' own records of the calls they ran: the VM, the claim it ran under (the
    `leasenet-claim` metadata its producer host adds) and when. A VM does not know who its lessee
    is, so `consumer` is left empty; the claim says it."""
    return [Execution(str(r["vm"]), 0, "", int(r.get("claim") or 0), int(r["start_ns"]), int(r["end_ns"]),
                      r.get("code") == OK) for r in lines if "method" in r and "start_ns" in r and "end_ns" in r]


def requests_from_call_lines(lines: Iterable[dict[str, Any]]) -> list[Request]:
    """A call workload's lines: each call made one request with the one outcome recorded after it."""
    calls = (line for line in lines if line.get("event") == "call")
    return [Request(i, str(c["vm"]), False, int(c["start_ns"]), (Outcome(str(c["code"]), int(c["end_ns"]),
                                                                         str(c.get("details", ""))),))
            for i, c in enumerate(calls)]


def requests_from_lines(lines: Iterable[dict[str, Any]]) -> list[Request]:
    """Join "sent" and "outcome" lines by request_id (an outcome line alone also counts as sent)."""
    sent: dict[int, dict[str, Any]] = {}
    outcomes: dict[int, list[Outcome]] = defaultdict(list)
    for line in lines:
        rid = int(line["request_id"])
        sent.setdefault(rid, line)
        if line.get("event") == "outcome":
            outcomes[rid].append(Outcome(str(line["status"]), int(line["done_ns"]), str(line.get("message", ""))))
    return [Request(rid, str(s["vm"]), bool(s.get("idempotent", False)), int(s["sent_ns"]), tuple(outcomes[rid]),
                    str(s.get("consumer_host", "")))
            for rid, s in sent.items()]


def claims_from_lines(lines: Iterable[dict[str, Any]]) -> list[ClaimSpan]:
    """Claim spans from "claimed"/"released" lines; a re-reported claim (after a reload) is one span,
    a claim reported with a different lessee under the same token is kept as a second span."""
    spans: dict[tuple[str, int, str, str], ClaimSpan] = {}
    by_claim: dict[tuple[str, int], list[tuple[str, int, str, str]]] = defaultdict(list)  # linear in the lines
    for line in lines:
        if line.get("event") not in ("claimed", "released"):
            continue
        vm, token = str(line["vm"]), int(line["token"])
        if line.get("event") == "claimed":
            key = (vm, token, str(line["lease_id"]), str(line["consumer_vm"]))
            if key not in spans:
                by_claim[(vm, token)].append(key)
                spans[key] = ClaimSpan(*key, str(line.get("consumer_host", "")), int(line["seen_ns"]),
                                       producer_host=str(line.get("producer_host") or ""))
        else:  # released: its claim's spans, found by (vm, token)
            ended = {"ended_revision": int(line["revision"]), "ended_ns": int(line["seen_ns"])}
            spans.update({k: replace(spans[k], **ended) for k in by_claim.get((vm, token), ())
                          if spans[k].ended_revision is None})
    return list(spans.values())


def pools_from_lines(lines: Iterable[dict[str, Any]]) -> list[PoolSpan]:
    """Pool spans from "pool-granted"/"pool-ended" lines (other lines are skipped)."""
    spans: dict[str, PoolSpan] = {}
    for line in lines:
        if line.get("event") == "pool-granted":
            lease = str(line["lease_id"])
            spans.setdefault(lease, PoolSpan(lease, str(line["consumer_vm"]), str(line["consumer_host"]),
                                             int(line["revision"]), int(line["seen_ns"])))
        elif line.get("event") == "pool-ended" and str(line["lease_id"]) in spans:
            lease = str(line["lease_id"])
            spans[lease] = replace(spans[lease], ended_revision=int(line["revision"]), ended_ns=int(line["seen_ns"]))
    return list(spans.values())


def faults_from_lines(lines: Iterable[dict[str, Any]]) -> list[Fault]:
    return [Fault(str(f["kind"]), str(f["action"]), str(f["target"]), int(f["at_ns"]),
                  None if f.get("healed_ns") is None else int(f["healed_ns"]), str(f.get("recover_from", "fault")),
                  tuple(f.get("affects", ()))) for f in lines]


class ClaimLog:
    """Claim lines (as `claims_from_lines` reads them) from a registry's lease events, for runs
    that follow WatchLeases instead of etcd: a member joining a lease is claimed, a member leaving
    it or the lease ending is released, at the event's revision."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.leases: set[str] = set()  # every lease seen live
        self._members: dict[str, dict[str, int]] = {}  # lease -> vm -> fencing token

    def update(self, lease_id: str, consumer_vm: str, consumer_host: str, members: dict[str, int], revision: int,
               ended: bool, seen_ns: int) -> None:
        now = {} if ended else members
        before = self._members.pop(lease_id, {})
        for vm, token in before.items():
            if now.get(vm) != token:
                self.lines.append({"event": "released", "vm": vm, "token": token, "revision": revision,
                                   "seen_ns": seen_ns})
        for vm, token in now.items():
            if before.get(vm) != token:
                self.lines.append({"event": "claimed", "vm": vm, "token": token, "lease_id": lease_id,
                                   "consumer_vm": consumer_vm, "consumer_host": consumer_host, "revision": revision,
                                   "seen_ns": seen_ns})
        if not ended:
            self._members[lease_id] = dict(now)
            self.leases.add(lease_id)


@dataclass(frozen=True, slots=True)
class Recording:
    """Everything recorded about one run, decoded: what the checks read."""

    requests: list[Request]
    executions: list[Execution]
    claims: list[ClaimSpan]
    pools: list[PoolSpan]
    faults: list[Fault]
    vm_calls: list[Execution] = field(default_factory=list)  # the VMs' own records (executions_from_vm_lines)


def load(requests: Sequence[Path] = (), executions: Sequence[Path] = (), claims: Sequence[Path] = (),
         faults: Sequence[Path] = ()) -> Recording:
    """`claims`: a recording of claims and pools (one file may hold both kinds of line)."""
    recorded = read_lines(claims)
    return Recording(requests_from_lines(read_lines(requests)), executions_from_lines(read_lines(executions)),
                   claims_from_lines(recorded), pools_from_lines(recorded), faults_from_lines(read_lines(faults)))


# --- the checks ----------------------------------------------------------------------------------
def outcome_violations(requests: Iterable[Request]) -> list[Violation]:
    out = []
    for r in requests:
        if not r.outcomes:
            out.append(Violation("lost", f"request {r.request_id} of {r.vm} was sent and got no outcome"))
        elif len(r.outcomes) > 1:
            out.append(Violation("duplicate-outcome", f"request {r.request_id} of {r.vm} got "
                                 f"{len(r.outcomes)} outcomes: {[o.status for o in r.outcomes]}"))
    return out


def double_leases(claims: Iterable[ClaimSpan]) -> list[Violation]:
    """A producer VM in two pools at once: a claim created (revision) while another was still alive."""
    by_vm: dict[str, list[ClaimSpan]] = defaultdict(list)
    for c in claims:
        by_vm[c.vm].append(c)
    out = []
    for vm, spans in by_vm.items():
        spans.sort(key=lambda c: c.token)
        for before, after in zip(spans, spans[1:]):
            if before.token == after.token:
                out.append(Violation("claim-changed", f"claim {before.token} on {vm} named both "
                                     f"{before.consumer_vm} (lease {before.lease_id}) and {after.consumer_vm} "
                                     f"(lease {after.lease_id})"))
            elif before.ended_revision is None or before.ended_revision > after.token:
                out.append(Violation("double-lease", f"{vm} was claimed for {after.consumer_vm} (lease "
                                     f"{after.lease_id}, revision {after.token}) while still claimed for "
                                     f"{before.consumer_vm} (lease {before.lease_id}, revision {before.token})"))
    return out


def overlapping(executions: Iterable[Execution]) -> list[Violation]:
    """A producer VM runs one request at a time. Each run is compared with the run that ends last
    so far on its VM, not just the previous one: a long run overlaps every short one inside it."""
    by_vm: dict[str, list[Execution]] = defaultdict(list)
    for e in executions:
        by_vm[e.vm].append(e)
    out = []
    for runs in by_vm.values():
        runs.sort(key=lambda e: (e.start_ns, e.end_ns))
        latest = runs[0]
        for run in runs[1:]:
            if run.start_ns < latest.end_ns:
                out.append(Violation("overlap", f"{run.vm} ran request {run.request_id} (from {run.start_ns}) "
                                     f"while still running request {latest.request_id} (until {latest.end_ns})"))
            if run.end_ns > latest.end_ns:
                latest = run
    return out


def shared_claims(executions: Iterable[Execution]) -> list[Violation]:
    """One claim (a VM and its fencing token) serves one consumer VM."""
    consumers: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in executions:
        consumers[(e.vm, e.token)].add(e.consumer)
    return [Violation("claim-shared", f"claim {token} on {vm} served {sorted(c)}")
            for (vm, token), c in consumers.items() if len(c) > 1]


def executed_twice(requests: Iterable[Request], executions: Iterable[Execution]) -> list[Violation]:
    runs = Counter(e.request_id for e in executions)
    return [Violation("executed-twice", f"non-idempotent request {r.request_id} of {r.vm} ran "
                      f"{runs[r.request_id]} times")
            for r in requests if not r.idempotent and runs[r.request_id] > 1]


def foreign_claims(executions: Iterable[Execution], claims: Iterable[ClaimSpan]) -> list[Violation]:
    """Fencing: every execution ran under a claim on that VM held by the consumer VM it served."""
    lessee = {(c.vm, c.token): c.consumer_vm for c in claims}
    out = []
    for e in executions:
        holder = lessee.get((e.vm, e.token))
        if holder is None:
            out.append(Violation("foreign-claim", f"{e.vm} ran request {e.request_id} of {e.consumer} under "
                                 f"fencing token {e.token}, a claim that was never granted"))
        elif holder != e.consumer:
            out.append(Violation("foreign-claim", f"{e.vm} ran request {e.request_id} of {e.consumer} under "
                                 f"claim {e.token}, which belongs to {holder}"))
    return out


def ungranted_claims(executions: Iterable[Execution], claims: Iterable[ClaimSpan]) -> list[Violation]:
    """Fencing from the VM's side: every call a VM recorded ran under a claim granted on that VM."""
    granted = {(c.vm, c.token) for c in claims}
    seen: set[tuple[str, int]] = set()
    out = []
    for e in executions:
        if (e.vm, e.token) not in granted and (e.vm, e.token) not in seen:
            seen.add((e.vm, e.token))
            out.append(Violation("foreign-claim", f"{e.vm} ran a call under claim {e.token}, which was never "
                                 "granted on it"))
    return out


def ok_not_run(requests: Iterable[Request], executions: Iterable[Execution]) -> list[Violation]:
    ran = {e.request_id for e in executions if e.ok}
    return [Violation("ok-not-run", f"request {r.request_id} of {r.vm} was answered OK, but no producer VM "
                      f"ran it") for r in requests if r.outcome is not None and r.outcome.status == OK
            and r.request_id not in ran]


def leases_not_freed(claims: Iterable[ClaimSpan], faults: Iterable[Fault], lease_ttl_s: float,
                     observed_until_ns: int) -> list[Violation]:
    """SPEC §6: a SIGKILLed consumer host's claims end within TTL + 1 s: those it held when it died,
    and any granted to it afterwards (a grant in flight) before it came back."""
    out = []
    claims = list(claims)
    for f in faults:
        if (f.kind, f.action) != ("consumer", "sigkill"):
            continue
        back = f.healed_ns if f.healed_ns is not None else observed_until_ns
        for c in claims:
            if c.consumer_host != f.target or c.seen_ns > back or (c.ended_ns is not None and c.ended_ns <= f.at_ns):
                continue
            deadline = max(f.at_ns, c.seen_ns) + int((lease_ttl_s + 1) * NS)
            if c.ended_ns is None and observed_until_ns < deadline:
                continue  # not watched long enough to tell
            if c.ended_ns is None or c.ended_ns > deadline:
                held = "still held" if c.ended_ns is None else f"freed after {(c.ended_ns - f.at_ns) / NS:.2f} s"
                out.append(Violation("lease-not-freed", f"{c.vm} stayed leased to {c.consumer_vm} (lease "
                                     f"{c.lease_id}) of killed consumer host {f.target}: {held}, "
                                     f"limit TTL + 1 s = {lease_ttl_s + 1:.0f} s"))
    return out


def _window(f: Fault, grace_s: float) -> tuple[int, int]:
    """From the fault until `grace_s` after its heal: what it may legitimately cause."""
    return f.at_ns, (f.healed_ns if f.healed_ns is not None else f.at_ns) + int(grace_s * NS)


def _explained(host: str, kind: str, at_ns: int, faults: Iterable[Fault], grace_s: float) -> bool:
    return any(f.kind == kind and f.target == host and _window(f, grace_s)[0] <= at_ns <= _window(f, grace_s)[1]
               for f in faults)


def lost_leases(pools: Iterable[PoolSpan], requests: Sequence[Request], faults: Sequence[Fault],
                lease_ttl_s: float, idle_release_s: float) -> list[Violation]:
    """A pool may end when its consumer VM went idle, or when its consumer host had a fault (killed:
    the TTL ends it; restarted: it gives leases back). Any other end is a lost lease."""
    sent: dict[str, list[int]] = defaultdict(list)
    for r in requests:
        sent[r.vm].append(r.sent_ns)
    out = []
    for p in pools:
        if p.ended_ns is None or _explained(p.consumer_host, "consumer", p.ended_ns, faults, lease_ttl_s + 1):
            continue
        busy_since = p.ended_ns - int(idle_release_s * NS)
        if any(busy_since < t <= p.ended_ns for t in sent.get(p.consumer_vm, ())):
            out.append(Violation("lease-lost", f"lease {p.lease_id} of busy consumer VM {p.consumer_vm} ended "
                                 f"(revision {p.ended_revision}) with no fault on its consumer host "
                                 f"{p.consumer_host}"))
    return out


def lost_members(claims: Iterable[ClaimSpan], pools: Iterable[PoolSpan], faults: Sequence[Fault],
                 grace_s: float) -> list[Violation]:
    """A claim may end before its pool when its producer host had a fault (the VM vanished, or the
    consumer host gave it back after the tunnel broke) or the pool's consumer host had one. Any
    other claim taken out of a live pool is a member lost."""
    pool_end = {p.lease_id: p.ended_revision for p in pools}
    out = []
    for c in claims:
        if c.ended_revision is None or c.ended_ns is None or c.lease_id not in pool_end:
            continue
        ended_with_pool = pool_end[c.lease_id] is not None and pool_end[c.lease_id] <= c.ended_revision
        if ended_with_pool or _explained(c.producer_host, "producer", c.ended_ns, faults, grace_s) \
                or _explained(c.consumer_host, "consumer", c.ended_ns, faults, grace_s):
            continue
        out.append(Violation("member-lost", f"{c.vm} (on {c.producer_host or 'an unknown host'}) was taken out of "
                             f"live lease {c.lease_id} of {c.consumer_vm} at revision {c.ended_revision} with no "
                             f"fault to explain it"))
    return out


def recovered_after(requests: Iterable[Request], start_ns: int, vms: Iterable[str]) -> dict[str, float | None]:
    """For each consumer VM that sent a request at or after `start_ns` and got its outcome: the
    seconds until its first OK answer among those, or None if none was OK."""
    by_vm: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        if r.sent_ns >= start_ns and r.outcome is not None:
            by_vm[r.vm].append(r)
    out: dict[str, float | None] = {}
    for vm in vms:
        if vm in by_vm:
            done = [r.outcome.done_ns for r in by_vm[vm] if r.outcome is not None and r.outcome.status == OK]
            out[vm] = max(0.0, (min(done) - start_ns) / NS) if done else None
    return out


def recoveries(requests: Sequence[Request], faults: Iterable[Fault]) -> list[Recovery]:
    """For each fault and each consumer VM it hit: from the fault (or its heal) to the first OK
    answer of a request that VM sent after that moment."""
    everyone = tuple(sorted({r.vm for r in requests}))
    out = []
    for f in faults:
        start = f.healed_ns if f.recover_from == "heal" and f.healed_ns is not None else f.at_ns
        after = recovered_after(requests, start, f.affects or everyone)
        out.append(Recovery(f, tuple(s for s in after.values() if s is not None),
                            tuple(vm for vm, s in after.items() if s is None)))
    return out


def check(history: Recording, *, lease_ttl_s: float | None = None, idle_release_s: float | None = None,
          fault_grace_s: float = 5.0, observed_until_ns: int | None = None) -> Report:
    """Every check whose inputs are present; figures from the requests.

    `lease_ttl_s` enables the lease-not-freed check (needs claims and faults); `idle_release_s`
    the lease-lost check (needs pools and requests); `fault_grace_s` is how long after a producer
    host's fault heals its VMs may still leave pools (a liveness TTL and some slack)."""
    h = history
    violations = outcome_violations(h.requests) + overlapping(h.executions) + shared_claims(h.executions)
    violations += executed_twice(h.requests, h.executions)
    if h.executions and h.requests:
        ours = {r.request_id for r in h.requests}
        violations += ok_not_run(h.requests, h.executions)
        if h.claims:
            violations += foreign_claims([e for e in h.executions if e.request_id in ours], h.claims)
    violations += double_leases(h.claims)
    violations += overlapping(h.vm_calls) + (ungranted_claims(h.vm_calls, h.claims) if h.claims else [])
    if h.pools:
        violations += lost_members(h.claims, h.pools, h.faults, fault_grace_s)
        if idle_release_s is not None:
            violations += lost_leases(h.pools, h.requests, h.faults, lease_ttl_s or 0.0, idle_release_s)
    if lease_ttl_s is not None and h.claims:
        until = observed_until_ns if observed_until_ns is not None else max(
            [c.ended_ns or c.seen_ns for c in h.claims], default=0)
        violations += leases_not_freed(h.claims, h.faults, lease_ttl_s, until)
    codes = Counter(r.outcome.status for r in h.requests if r.outcome is not None)
    ok = codes.pop(OK, 0)
    lost = sum(1 for r in h.requests if not r.outcomes)
    recovered = recoveries(h.requests, h.faults)
    for rec in recovered:
        violations += [Violation("unrecovered", f"{vm} never got an OK answer after {rec.fault.name} of "
                                 f"{rec.fault.target}") for vm in rec.unrecovered]
    return Report(len(h.requests), ok, dict(sorted(codes.items())), lost, violations, recovered)


# --- the figure table ----------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(name: str, report: Report) -> str:
    errors = ", ".join(f"{code} {n}" for code, n in report.errors_by_code.items()) or "none"
    lines = [f"== {name}",
             f"requests {report.requests}  ok {report.ok}  errors {report.errors} ({errors})  "
             f"lost {report.lost}  violations {len(report.violations)}"]
    if report.recoveries:
        lines.append(f"  {'fault':<18} {'target':<12} {'recover from':<12} {'p50 s':>7} {'max s':>7} {'VMs':>4}")
        for rec in report.recoveries:
            lines.append(f"  {rec.fault.name:<18} {rec.fault.target:<12} {rec.fault.recover_from:<12} "
                         f"{_seconds(rec.p50):>7} {_seconds(rec.max):>7} {len(rec.seconds):>4}")
    by_kind = Counter(v.kind for v in report.violations)
    lines += [f"  ! {kind}: {n}, e.g. {next(v.detail for v in report.violations if v.kind == kind)}"
              for kind, n in by_kind.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m leasenet.checker --requests H.jsonl [--executions P*.jsonl] [--claims C] [--faults F]
    [--calls W.jsonl] [--vm-calls V*.jsonl]`"""
    p = argparse.ArgumentParser(prog="python -m leasenet.checker", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", nargs="*", default=[], type=Path, help="traffic histories")
    p.add_argument("--executions", nargs="*", default=[], type=Path, help="producer host histories")
    p.add_argument("--claims", nargs="*", default=[], type=Path, help="claim recordings")
    p.add_argument("--faults", nargs="*", default=[], type=Path, help="fault logs")
    p.add_argument("--calls", nargs="*", default=[], type=Path, help="call workload histories (VIP endpoints)")
    p.add_argument("--vm-calls", nargs="*", default=[], type=Path, help="the VMs' own records of their calls")
    p.add_argument("--lease-ttl", type=float, default=None, help="the service's lease_ttl_s")
    p.add_argument("--idle-release", type=float, default=None, help="the service's idle_release_s")
    p.add_argument("--name", default="run", help="heading of the table")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    history = load(args.requests, args.executions, args.claims, args.faults)
    history.requests += requests_from_call_lines(read_lines(args.calls))
    history.vm_calls += executions_from_vm_lines(read_lines(args.vm_calls))
    report = check(history, lease_ttl_s=args.lease_ttl, idle_release_s=args.idle_release)
    if args.json:
        print(json.dumps({"requests": report.requests, "ok": report.ok, "errors": report.errors,
                          "errors_by_code": report.errors_by_code, "lost": report.lost,
                          "violations": [{"kind": v.kind, "detail": v.detail} for v in report.violations],
                          "recoveries": [{"fault": r.fault.name, "target": r.fault.target, "p50_s": r.p50,
                                          "max_s": r.max} for r in report.recoveries]}, indent=2))
    else:
        print(render(args.name, report))
    return 1 if report.lost or report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())

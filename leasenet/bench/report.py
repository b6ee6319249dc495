"""Gathering the slices into one report, the targets of SPEC §8 and what --quick asserts. The
report is the JSON document `leasenet bench --json` prints (bench.render makes the tables).

The method (issue 13): the targets of a cell run in many short slices, alternating round after
round; a ratio (say overlay/relay) is taken within each round, between adjacent slices, so what
the machine's other work does to both sides cancels out; the cell reports the median of those
paired ratios with its confidence interval, a target passes on the median, and the overlay run
against itself shows that the method reads 1.00 within that interval."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from leasenet.bench.datapath import counts_etcd
from leasenet.bench.measure import median, paired, ratio
from leasenet.bench.plans import (
    GRANT_POOL, METRICS_ON, MODES, PAIRS, PAYLOADS, RACE_HOSTS, RACE_POOL, RACE_VMS, RACE_VMS_PER_HOST, SELF, CellResult,
    FailoverResult, GrantsResult, LoadResult, RaceResult,
)

# etcd methods a host's request path would use if it read or wrote etcd (everything but keep-alives)
REQUEST_PATH_METHODS = ("Range", "Put", "DeleteRange", "Txn", "Compact", "LeaseGrant", "LeaseRevoke")
FIGURES = ("rps", "p50_ms", "p99_ms")


def size_label(payload: int) -> str:
    return f"{payload // 1024} KiB" if payload >= 1024 else f"{payload} B"


def _counts(counters: Any) -> dict[str, int]:
    return dict(sum((Counter(c) for c in counters), Counter()))


def _target(slices: list[CellResult]) -> dict[str, Any]:
    """One target of one cell: the median slice's figures, and every request it sent."""
    figures: dict[str, Any] = {k: median(getattr(c, k) for c in slices) for k in FIGURES}
    names = sorted({n for c in slices for n in c.cpu_us_per_request})
    figures["cpu_us_per_request"] = {n: median(c.cpu_us_per_request.get(n) for c in slices) for n in names}
    figures["slices"] = len(slices)
    return figures


def _ratios(numerator: list[CellResult], denominator: list[CellResult]) -> dict[str, Any]:
    """Each figure's ratio within every round both targets ran in: median and interval."""
    other = {c.round: c for c in denominator}
    pairs = [(c, other[c.round]) for c in numerator if c.round in other]
    return {k: paired(ratio(getattr(a, k), getattr(b, k)) for a, b in pairs) for k in FIGURES}


def summarize_datapath(result: LoadResult) -> list[dict[str, Any]]:
    cells: dict[tuple[str, int, int, bool], dict[str, list[CellResult]]] = {}
    for cell in result.cells:
        if cell.target != "idle":
            cells.setdefault(cell.key, {}).setdefault(cell.target, []).append(cell)
    rows = []
    for (mode, payload, conc, check), by_target in cells.items():
        rows.append({
            "mode": mode, "payload": payload, "concurrency": conc, "check": check,
            "targets": {t: _target(slices) for t, slices in by_target.items()},
            "ratios": {f"{a}/{b}": _ratios(by_target[a], by_target[b]) for a, b in PAIRS
                       if a in by_target and b in by_target},
            "requests": {t: sum(c.sent for c in slices) for t, slices in by_target.items()},
            "answered": {t: sum(c.answered for c in slices) for t, slices in by_target.items()},
            "errors": {t: _counts(c.errors for c in slices) for t, slices in by_target.items()}})
    return rows


def summarize_etcd(result: LoadResult) -> dict[str, Any]:
    by_method: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    requests, busy_s, idle_s = 0, 0.0, 0.0
    for cell in result.cells:
        if counts_etcd(cell.target):
            by_method.update(cell.etcd)
            requests += cell.answered
            busy_s += cell.elapsed_s
        elif cell.target == "idle":
            idle.update(cell.etcd)
            idle_s += cell.elapsed_s
    total = sum(by_method.values())
    background_per_s = sum(idle.values()) / idle_s if idle_s else 0.0
    excess = max(0.0, total - background_per_s * busy_s)  # what the traffic added to the background
    request_path = sum(by_method.get(m, 0) for m in REQUEST_PATH_METHODS)
    return {"requests_per_service_request": round(excess / requests, 5) if requests else None,
            "service_requests": requests, "etcd_requests": total, "by_method": dict(by_method),
            "request_path_etcd_requests": request_path, "seconds": round(busy_s, 1),
            "idle_background_per_s": round(background_per_s, 2), "idle_by_method": dict(idle),
            "traffic_added": round(excess, 1)}


def summarize_leasing(grants: list[GrantsResult], races: list[RaceResult]) -> dict[str, Any]:
    return {"grant_pool_size": GRANT_POOL, "grant_p50_ms": median(g.p50_ms for g in grants),
            "grant_p99_ms": median(g.p99_ms for g in grants), "grants_measured": sum(g.grants for g in grants),
            "grant_failures": _counts(g.failures for g in grants),
            "grant_pool_sizes": _counts(g.pool_sizes for g in grants),
            "race_consumer_hosts": RACE_HOSTS, "race_consumer_vms": RACE_HOSTS * RACE_VMS_PER_HOST,
            "race_fleet_vms": RACE_VMS, "race_demand_vms": RACE_HOSTS * RACE_VMS_PER_HOST * RACE_POOL,
            "grants_per_s": median(r.grants_per_s for r in races),
            "race_granted": sum(r.granted for r in races), "race_served": sum(r.served for r in races),
            "race_exhausted": sum(r.exhausted for r in races),
            "race_errors": _counts(r.errors for r in races),
            "race_error_samples": [e for r in races for e in r.error_samples][:5],
            "race_violations": [v for r in races for v in r.violations],
            "grant_runs": [asdict(g) for g in grants], "race_runs": [asdict(r) for r in races]}


def summarize_failover(runs: list[FailoverResult]) -> dict[str, Any]:
    return {"failover_s": median(r.failover_s for r in runs),
            "failover_runs_s": [r.failover_s for r in runs],
            "requests": sum(r.requests for r in runs), "errors": sum(r.errors for r in runs),
            "errors_by_code": _counts(r.errors_by_code for r in runs),
            "errors_idempotent": sum(r.errors_idempotent for r in runs),
            "unanswered": sum(r.unanswered for r in runs),
            "error_samples": [e for r in runs for e in r.error_samples][:3], "runs": [asdict(r) for r in runs]}


def find(datapath: list[dict[str, Any]], mode: str, payload: int, conc: int, check: bool = False) -> dict[str, Any] | None:
    return next((r for r in datapath if (r["mode"], r["payload"], r["concurrency"], r["check"])
                 == (mode, payload, conc, check)), None)


# SPEC §8 (issue 13): (the pair, the figure, <= or >=, the bar, C); for unary and stream, 100 B and 16 KiB
SPEED_TARGETS = (("overlay/relay", "p50_ms", "<=", 1.05, 1), ("overlay/relay", "rps", ">=", 0.95, 64),
                 ("overlay/direct", "rps", ">=", 0.8, 64),
                 (f"{METRICS_ON}/overlay", "rps", ">=", 0.95, 64))  # issue 14: metrics cost at most 5%
FIGURE_NAMES = {"rps": "throughput", "p50_ms": "p50", "p99_ms": "p99"}


def speed_targets(datapath: list[dict[str, Any]], bars: tuple[tuple[str, str, str, float, int], ...] = SPEED_TARGETS,
                  suffixes: tuple[str, ...] = ("", "-tls"), unmeasured: str = "") -> list[dict[str, Any]]:
    """Each bar on each cell it applies to, plaintext and (when measured) with TLS: passes on the
    median of the paired ratios; the interval goes with it. `unmeasured`: a bar of a measured cell
    whose pair was not measured is listed anyway, with no value, pass None and this note."""
    out = []
    for suffix in suffixes:
        for pair, figure, sign, limit, conc in bars:
            a, b = pair.split("/")
            name = f"{a}{suffix}/{b}{suffix}"
            for mode in MODES:
                for payload in PAYLOADS:
                    row = find(datapath, mode, payload, conc)
                    target = f"{name} {FIGURE_NAMES[figure]} {sign} {limit} ({mode}, {size_label(payload)}, C={conc})"
                    if row is not None and name not in row["ratios"] and unmeasured:
                        out.append({"target": target, "value": None, "limit": limit, "pass": None, "note": unmeasured})
                    if row is None or name not in row["ratios"]:
                        continue
                    r = row["ratios"][name][figure]
                    value = r["median"]
                    ok = value is not None and (value <= limit if sign == "<=" else value >= limit)
                    out.append({"target": target, "value": value, "low": r["low"], "high": r["high"],
                                "limit": limit, "pass": ok, "tls": bool(suffix)})
    return out


def self_checks(datapath: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The method's check: the overlay against itself reads 1.00 within the reported interval."""
    name = "/".join(SELF)
    out = []
    for row in datapath:
        if row["check"] and name in row["ratios"]:
            for figure in ("rps", "p50_ms"):
                r = row["ratios"][name][figure]
                out.append({"target": f"method: {name} {FIGURE_NAMES[figure]} = 1.00 within its interval "
                                      f"({row['mode']}, {size_label(row['payload'])}, C={row['concurrency']})",
                            "value": r["median"], "low": r["low"], "high": r["high"], "limit": 1.0,
                            "pass": r["low"] is not None and r["low"] <= 1.0 <= r["high"], "method": True})
    return out


def targets(datapath: list[dict[str, Any]], etcd: dict[str, Any], leasing: dict[str, Any],
            failover: dict[str, Any], double_claims: int) -> list[dict[str, Any]]:
    out = speed_targets(datapath) + self_checks(datapath)
    per_request = etcd["requests_per_service_request"]
    out.append({"target": "etcd requests per service request in steady state = 0", "value": per_request,
                "limit": 0, "pass": etcd["request_path_etcd_requests"] == 0 and (per_request or 0) < 0.001})
    out.append({"target": "pool-of-4 grant p50 <= 10 ms", "value": leasing["grant_p50_ms"], "limit": 10.0,
                "pass": leasing["grant_p50_ms"] is not None and leasing["grant_p50_ms"] <= 10.0})
    out.append({"target": "double claims = 0", "value": double_claims, "limit": 0, "pass": double_claims == 0})
    out.append({"target": "failover < 1 s", "value": failover["failover_s"], "limit": 1.0,
                "pass": failover["failover_s"] is not None and failover["failover_s"] < 1.0})
    return out


def correctness(datapath: list[dict[str, Any]], leasing: dict[str, Any], failover: dict[str, Any],
                double_claims: int) -> dict[str, Any]:
    """What --quick asserts: every request answered, no errors without a fault, no double claims."""
    sent = sum(sum(r["requests"].values()) for r in datapath)
    answered = sum(sum(r["answered"].values()) for r in datapath)
    errors = sum(sum(e.values()) for r in datapath for e in r["errors"].values())
    problems = []
    if answered != sent:
        problems.append(f"{sent - answered} data-path request(s) got no answer")
    if errors:
        problems.append(f"{errors} data-path request(s) ended in an error without any fault")
    if leasing["grant_failures"] or set(leasing["grant_pool_sizes"]) - {str(GRANT_POOL)}:
        problems.append(f"pool-of-{GRANT_POOL} grants failed or were short: {leasing['grant_failures']} "
                        f"{leasing['grant_pool_sizes']}")
    if not leasing["race_granted"]:
        problems.append("no consumer host won a lease in the race")
    if failover["unanswered"]:
        problems.append(f"{failover['unanswered']} request(s) got no outcome during failover")
    if failover["failover_s"] is None:
        problems.append("traffic did not flow again after the producer host was killed")
    if double_claims:
        problems.append(f"{double_claims} double claim(s)")
    return {"requests": sent, "answered": answered, "errors": errors, "double_claims": double_claims,
            "failover_unanswered": failover["unanswered"], "ok": not problems, "problems": problems}


def method_check(report_targets: list[dict[str, Any]]) -> dict[str, Any]:
    """What --quick asserts about the method: its self-check was measured and held."""
    checks = [t for t in report_targets if t.get("method")]
    failed = [f"{t['target']}: {t['value']} [{t['low']}, {t['high']}]" for t in checks if not t["pass"]]
    if not checks:
        failed.append("the method's self-check (the overlay against itself) was not measured")
    return {"ok": not failed, "checks": len(checks), "problems": failed}

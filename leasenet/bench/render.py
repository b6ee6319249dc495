"""The tables a person reads: `leasenet bench` without --json. Every ratio is the median of the
paired ratios (one per round of alternating slices) with its confidence interval in brackets."""

from __future__ import annotations

from typing import Any

from leasenet.bench.measure import ratio
from leasenet.bench.plans import METRICS_ON
from leasenet.bench.report import size_label
from leasenet.inspection import table


def _num(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _ratio(row: dict[str, Any], pair: str, figure: str) -> str:
    """'0.93 [0.85-1.02]': the median of the paired ratios and its interval."""
    r = row["ratios"].get(pair, {}).get(figure)
    if not r or r["median"] is None:
        return "-"
    return f"{r['median']:.2f} [{r['low']:.2f}-{r['high']:.2f}]"


def _figure(row: dict[str, Any], target: str, figure: str, digits: int, unit: str = "") -> str:
    return _num(row["targets"].get(target, {}).get(figure), digits, unit)


def _cell(row: dict[str, Any]) -> list[str]:
    return [row["mode"], size_label(row["payload"]), str(row["concurrency"])]


def datapath_tables(rows: list[dict[str, Any]], suffix: str) -> list[str]:
    """Throughput and latency of direct, relay and overlay (suffix "-tls": the same over TLS)."""
    d, r, o = f"direct{suffix}", f"relay{suffix}", f"overlay{suffix}"
    tls = bool(suffix)
    header = ["mode", "payload", "C", "direct req/s", "relay req/s", "overlay req/s", "overlay/direct",
              "overlay/relay"] + (["overlay TLS/plain"] if tls else [])
    body = [_cell(x) + [_figure(x, d, "rps", 0), _figure(x, r, "rps", 0), _figure(x, o, "rps", 0),
                        _ratio(x, f"{o}/{d}", "rps"), _ratio(x, f"{o}/{r}", "rps")]
            + ([_ratio(x, f"{o}/overlay", "rps")] if tls else []) for x in rows]
    out = ["throughput", table(body, header), ""]
    header = ["mode", "payload", "C", "direct p50", "relay p50", "overlay p50", "overlay/direct", "overlay/relay",
              "direct p99", "overlay p99"] + (["overlay TLS/plain"] if tls else [])
    body = [_cell(x) + [_figure(x, d, "p50_ms", 2, " ms"), _figure(x, r, "p50_ms", 2, " ms"),
                        _figure(x, o, "p50_ms", 2, " ms"), _ratio(x, f"{o}/{d}", "p50_ms"),
                        _ratio(x, f"{o}/{r}", "p50_ms"), _figure(x, d, "p99_ms", 2, " ms"),
                        _figure(x, o, "p99_ms", 2, " ms")]
            + ([_ratio(x, f"{o}/overlay", "p50_ms")] if tls else []) for x in rows]
    return out + ["latency", table(body, header)]


def metrics_table(rows: list[dict[str, Any]]) -> str:
    """Metrics on beside off: throughput, p50, and the two hosts' CPU per request (median slice)."""
    header = ["mode", "payload", "C", "metrics off req/s", "metrics on req/s", "on/off throughput", "off p50",
              "on p50", "on/off p50", "hosts' CPU off", "hosts' CPU on"]
    pair = f"{METRICS_ON}/overlay"

    def hosts_cpu(row: dict[str, Any], target: str) -> str:
        cpu = row["targets"].get(target, {}).get("cpu_us_per_request", {})
        used = [cpu.get(name) for name in ("consumer host", "producer host")]
        return "-" if None in used else f"{sum(used):.0f} us"  # type: ignore[arg-type]

    body = [_cell(x) + [_figure(x, "overlay", "rps", 0), _figure(x, METRICS_ON, "rps", 0), _ratio(x, pair, "rps"),
                        _figure(x, "overlay", "p50_ms", 2, " ms"), _figure(x, METRICS_ON, "p50_ms", 2, " ms"),
                        _ratio(x, pair, "p50_ms"), hosts_cpu(x, "overlay"), hosts_cpu(x, METRICS_ON)] for x in rows]
    return table(body, header)


def cpu_table(rows: list[dict[str, Any]], suffix: str) -> str:
    header = ["mode", "payload", "C", "direct server", "client", "relay + end", "client", "consumer host",
              "producer host", "client", "overlay total / direct total"]
    body = []
    for x in rows:
        d, r, o = (x["targets"].get(t + suffix, {}).get("cpu_us_per_request", {}) for t in ("direct", "relay", "overlay"))
        relay = sum(v for k, v in r.items() if k != "client" and v) or None
        dt, ot = sum(v for v in d.values() if v), sum(v for v in o.values() if v)
        body.append(_cell(x) + [_num(d.get("server"), 0), _num(d.get("client"), 0), _num(relay, 0),
                                _num(r.get("client"), 0), _num(o.get("consumer host"), 0),
                                _num(o.get("producer host"), 0), _num(o.get("client"), 0), _num(ratio(ot, dt))])
    return table(body, header)


def verdict(t: dict[str, Any]) -> str:
    spread = f" [{_num(t['low'], 3)}-{_num(t['high'], 3)}]" if t.get("low") is not None else ""
    if t["pass"] is None:  # a bar whose figures were not measured
        return f"  N/A   {t['target']}: {t.get('note', 'not measured')}"
    return f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {_num(t['value'], 3)}{spread}"


def render(report: dict[str, Any]) -> str:
    m, st = report["machine"], report["settings"]
    loop = report["event_loop"]
    compared = [r for r in report["datapath"] if not r["check"]]
    lines = [f"leasenet bench{' --quick (correctness and the method check only)' if st['quick'] else ''}: "
             f"{st['rounds']} rounds of alternating {st['slice_s']} s slices per cell; every ratio is the median "
             f"of the paired ratios (one per round, adjacent slices) [its {st['confidence']:.0%} confidence "
             f"interval]",
             f"machine: {m['platform']}, {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB; "
             f"Python {m['python']}; leasenet {m['leasenet']}, grpcio {m['grpcio']}, protobuf {m['protobuf']}, "
             f"etcd3aio {m['etcd3aio']}, etcd {m['etcd'] or '?'}; load average at start {m['load_average']}",
             "",
             f"data path, plaintext; event loop in every process: {loop} (echo handler; one load-generator process "
             "drives every target; unary = one Send call per request, stream = SendStream with C requests in",
             "flight; overlay = consumer VM -> consumer host -> tunnel -> producer host -> VM; relay = the same two "
             "extra grpc hops through the consumer host's tunnel client, nothing else)", ""]
    lines += datapath_tables(compared, "")
    lines += ["", f"CPU per request in microseconds, plaintext; event loop: {loop} (all threads of each process, "
                  "the median slice)", cpu_table(compared, "")]
    with_tls = [r for r in compared if "direct-tls" in r["targets"]]
    if with_tls:
        lines += ["", f"data path with mutual TLS on every hop and on the direct baseline; event loop in every "
                      f"process: {loop} (overlay TLS/plain: the TLS overlay over the plaintext one, same rounds)", ""]
        lines += datapath_tables(with_tls, "-tls")
        lines += ["", f"CPU per request in microseconds, TLS; event loop: {loop}", cpu_table(with_tls, "-tls")]
    on_off = [r for r in compared if f"{METRICS_ON}/overlay" in r["ratios"]]
    if on_off:
        lines += ["", "metrics on/off: the same plaintext overlay with every process serving /metrics (recording "
                      "every request) over the overlay with metrics off (recording nothing), same rounds",
                  metrics_table(on_off)]
    checks = [t for t in report["targets"] if t.get("method")]
    again = " (measured twice: the first did not hold)" if report["method"].get("measured") == 2 else ""
    lines += ["", f"the method's self-check (the overlay against itself, the same alternating slices){again}:"]
    lines += [verdict(t) for t in checks] or ["  not measured"]
    e = report["etcd"]
    methods = ", ".join(f"{k} {v}" for k, v in sorted(e["by_method"].items())) or "none"
    lines += ["", f"etcd load in steady state: {_num(e['requests_per_service_request'], 5)} etcd requests per "
                  f"service request: {e['etcd_requests']} etcd requests ({methods}) during {e['service_requests']:,} "
                  f"overlay requests in {e['seconds']} s; idle background {e['idle_background_per_s']}/s "
                  f"(host liveness and lease keep-alives); on the request path: {e['request_path_etcd_requests']}"]
    le = report["leasing"]
    lines += [f"leasing: pool-of-{le['grant_pool_size']} grant latency p50 {_num(le['grant_p50_ms'], 2, ' ms')}, "
              f"p99 {_num(le['grant_p99_ms'], 2, ' ms')} ({le['grants_measured']} grants at the leasing API); "
              f"{le['race_consumer_hosts']} consumer hosts racing ({le['race_consumer_vms']} consumer VMs want "
              f"{le['race_demand_vms']} producer VMs, {le['race_fleet_vms']} exist): "
              f"{_num(le['grants_per_s'], 1)} grants/s, {le['race_granted']} granted, {le['race_exhausted']} "
              f"refused RESOURCE_EXHAUSTED, other errors {le['race_errors'] or 'none'}; "
              f"double claims {report['double_claims']}"]
    f = report["failover"]
    codes = ", ".join(f"{k} {v}" for k, v in f["errors_by_code"].items()) or "none"
    lines += [f"failover: SIGKILL of the busiest producer host under traffic: flowing again after "
              f"{_num(f['failover_s'], 3, ' s')} (runs: {', '.join(_num(x, 3) for x in f['failover_runs_s'])}); "
              f"{f['errors']} of {f['requests']:,} requests ended in an error ({codes}; {f['errors_idempotent']} of "
              f"them idempotent); {f['unanswered']} without an outcome"]
    if st["quick"]:
        c = report["correctness"]
        lines += ["", f"correctness: {'OK' if c['ok'] else 'FAILED'}: {c['answered']:,} of {c['requests']:,} "
                      f"data-path requests answered, {c['errors']} errors, {c['double_claims']} double claims"
                  + "".join(f"\n  ! {p}" for p in c["problems"])]
    else:
        speed = [t for t in report["targets"] if not t.get("method")]
        lines += ["", "targets (SPEC §8; a speed target passes on the median, its interval in brackets):"]
        lines += [verdict(t) for t in speed]
    return "\n".join(lines)


# --- bench --calls (bench.calls) -----------------------------------------------------------------
CALL_PROCESSES = {"direct": ("vm", "client"), "relay": ("relay 1", "relay 2", "vm", "client"),
                  "overlay": ("consumer host", "producer host", "vm", "client")}


def calls_cpu_table(rows: list[dict[str, Any]]) -> str:
    header = ["mode", "payload", "C"] + [f"{t}: {n}" for t, ns in CALL_PROCESSES.items() for n in ns]
    body = [_cell(x) + [_num(x["targets"].get(t, {}).get("cpu_us_per_request", {}).get(n), 0)
                        for t, ns in CALL_PROCESSES.items() for n in ns] for x in rows]
    return table(body, header)


def render_calls(report: dict[str, Any]) -> str:
    m, st = report["machine"], report["settings"]
    lines = [f"leasenet bench --calls{' --quick' if st['quick'] else ''}: {st['rounds']} rounds of alternating "
             f"{st['slice_s']} s slices per cell; every ratio is the median of the paired ratios "
             f"[its {st['confidence']:.0%} confidence interval]",
             f"machine: {m['platform']}, {m['cores']} cores ({m['cpu']}); Python {m['python']}, grpcio {m['grpcio']}; "
             f"load average at start {m['load_average']}; event loop of the client and the relays: "
             f"{report['event_loop']}",
             f"the same client (the notebook's generated stubs) and VM server ({st['vm_command']}); unary = Echo, "
             "C callers; stream = C Chat calls at once, figures per line; relay = client -> relay -> relay -> VM "
             "server (generic L7 relays passing raw messages, metadata, trailers and status)",
             *([f"! {report['overlay_note']}"] if report["overlay_note"] else []), ""]
    lines += datapath_tables(report["calls"], "")
    header = ["mode", "payload", "C", "relay/direct throughput", "relay/direct p50"]
    body = [_cell(x) + [_ratio(x, "relay/direct", "rps"), _ratio(x, "relay/direct", "p50_ms")] for x in report["calls"]]
    lines += ["", "what two generic relay hops cost (paired ratios)", table(body, header)]
    lines += ["", "CPU per call (stream: per line) in microseconds, all threads of each process, the median slice",
              calls_cpu_table(report["calls"]), "", "targets (issue 18 part 7; a ratio passes on its median):"]
    lines += [verdict(t) for t in report["targets"]]
    return "\n".join(lines + ["", *vm_lifecycle_lines(report["vm_lifecycle"])])


def vm_lifecycle_lines(section: dict[str, Any]) -> list[str]:
    """Restart-to-ready of a command VM, and grant latency by fleet and pool size (figures, no bar)."""
    def row(name: str, s: dict[str, Any]) -> list[str]:
        return [name, _num(s["p50_ms"], 1, " ms"), _num(s["p90_ms"], 1, " ms"), str(s["n"])]

    restarts = [row(f"{how}: {what}", section["restart_to_ready"][how]) for how, what in
                (("reset", "release -> next incarnation"), ("kill", "SIGKILL -> next incarnation"))]
    grants = [row(f"pool of {pool}, {fleet}", s) for fleet, pools in section["grant"].items()
              for pool, s in pools.items()]
    header = ["", "p50", "p90", "n"]
    return [f"VM life cycle ({section['vms_per_fleet']} VMs per fleet; {section['method']}; no bar in the issue)",
            "restart-to-ready of a command VM", table(restarts, header), "",
            "grant latency (RequestLease)", table(grants, header),
            *([f"! failures: {section['failures']}"] if section["failures"] else [])]

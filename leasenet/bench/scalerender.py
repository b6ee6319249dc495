"""How `leasenet bench --scale` reads out: the problems a quick run must not have, and the table
and targets a person reads (the report in, text out)."""

from __future__ import annotations

from typing import Any

from leasenet.bench.render import verdict
from leasenet.bench.scale import CHURN_SERVICES, SCALE_POOL, SCARCE_VMS
from leasenet.bench.scalereport import CONSUMER, PRODUCER
from leasenet.inspection import table


def scale_problems(r: dict[str, Any]) -> list[str]:
    """What makes a run wrong, not slow: a pool not held, an error, a double claim, a figure missing."""
    problems = []
    if r["held"]["held"] != r["settings"]["pools"] or r["held"]["errors"]:
        problems.append(f"held {r['held']['held']} of {r['settings']['pools']} pools ({r['held']['errors']})")
    if r["double_claims"]:
        problems.append(f"{r['double_claims']} double claim(s): "
                        f"{(r['contended']['violations'] + r['churn']['violations'])[:3]}")
    for name in ("small", "big", "big_with_pools"):
        fleet = r[name]
        if fleet["grant_failures"] or fleet["request_errors"]:
            problems.append(f"{name}: errors {fleet['grant_failures']} {fleet['request_errors']}")
    if r["churn"]["errors"] or r["contended"]["errors"]:
        problems.append(f"grant/release errors: {r['churn']['errors']} {r['contended']['errors']}")
    if errors := [size["errors"] for size in r["watch_fanout"]["sizes"] if size["errors"]]:
        problems.append(f"watch fan-out grant/release errors: {errors}")
    if not r["churn"]["claim_lines"]:
        problems.append("the churn's claim history is empty: double claims were not checked")
    figures = {"grant p50 ratio": r["grant_p50_ratio"], "request p50 ratio": r["request_p50_ratio"],
               "snapshot": r["snapshot"]["p50_ms"], "hosts' keep-alives": r["keep_alive"]["hosts"]["requests_per_s"],
               "churn grants/s": r["churn"]["grants_per_s"], "watch events growth": r["watch_fanout"]["growth"],
               **{f"churn CPU of a {k}": v for k, v in r["churn"]["cpu_ms_per_cycle"].items() if v is None}}
    problems += [f"no figure for {name}" for name, value in figures.items() if value is None]
    return problems


def render_scale(r: dict[str, Any]) -> str:
    small, big, loaded, churn, c = r["small"], r["big"], r["big_with_pools"], r["churn"], r["contended"]
    m, keep, fan = r["machine"], r["keep_alive"], r["watch_fanout"]
    cpu, raw = churn["cpu_ms_per_cycle"], churn["cpu_ms_per_cycle_unfloored"]
    share = churn["non_party_pct"]
    rows = [
        ["machine", f"{m['cpu']}, {m['cores_usable']} cores, load {m['load_average']} at start, "
                    f"{r['load_average_end']} at end", ""],
        ["key schema", fan["key_schema"], "what each kind of process watches: mapping/scopes.py"],
        [f"registration of {r['registration_vms']:,} VMs", f"{r['registration_s']:.1f} s",
         "median of " + ", ".join(f"{x:.1f}" for x in r["registrations_s"]) + " s"],
        [f"replica snapshot load ({r['snapshot']['keys']:,} keys)", f"{r['snapshot']['p50_ms']:.0f} ms", ""],
        ["RSS per process (MiB)", ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["rss_mib"].items()) if v), ""],
        [f"pools held ({r['held']['held']:,})", f"leased in {r['held']['elapsed_s']:.1f} s", str(r["held"]["errors"] or "")],
        [f"grant p50/p99, pool of {SCALE_POOL}: {small['vms']:,} VMs", f"{small['grant_p50_ms']} / {small['grant_p99_ms']} ms", ""],
        [f"grant p50/p99, pool of {SCALE_POOL}: {big['vms']:,} VMs", f"{big['grant_p50_ms']} / {big['grant_p99_ms']} ms",
         f"ratio {r['grant_p50_ratio']}, rounds {r['grant_p50_ratios']}"],
        [f"a grant's choice of VMs in-process: {small['vms']:,} / {big['vms']:,} VMs",
         f"{r['grant_choice_us']['small_us']} / {r['grant_choice_us']['big_us']} us",
         f"ratio {r['grant_choice_us']['ratio']}, rounds {r['grant_choice_us']['ratios']}"],
        [f"uncontended grants/s (churn: {len(CHURN_SERVICES)} services, one owned by each registry, "
         f"{churn['concurrency']} in flight)", f"{churn['grants_per_s']}",
         ", ".join(f"{lane['service']} {lane['grants']:,}" for lane in churn["lanes"])],
        ["CPU per grant/release cycle (ms), net of each process's idle rate",
         f"etcd {cpu.get('etcd')}, registries {cpu.get('registries')} (both summed)",
         f"the grant-rate role (the calls' client side, for {churn['consumer_host']}, and its claim recorder) "
         f"{cpu.get('client')}"],
        *[[f"  {kind}s: party / not party (ms)", f"{cpu.get('party ' + kind)} / {cpu.get('non-party ' + kind)}",
            f"not party: {share.get(kind)}% of party (unfloored: {raw.get('party ' + kind)} / "
            f"{raw.get('non-party ' + kind)})"] for kind in (CONSUMER, PRODUCER)],
        ["grants/s a core could sustain at these costs: one registry core, one etcd core",
         f"{churn['projection']['grants_per_s_per_registries_core']} / {churn['projection']['grants_per_s_per_etcd_core']}",
         "1000 / CPU ms per cycle (registries summed): no other process on those cores"],
        ["etcd watch events sent per grant in the churn", f"{churn['watch_events_per_grant']}",
         f"{churn['watchers']:.0f} watchers" if churn["watchers"] is not None else ""],
        *[[f"watch fan-out at {size['hosts']} hosts ({size['light_hosts']} light): events per grant",
           f"{size['events_per_grant']}", f"{size['watchers']:.0f} watchers, {size['grants']:,} grants at "
           f"{size['grants_per_s']}/s, a light host's CPU {size['light_host_cpu_ms_per_cycle']} ms per cycle"]
          for size in fan["sizes"]],
        [f"contended ({SCARCE_VMS} VMs, {c['concurrency']} in flight): grants/s, refusals/s",
         f"{c['grants_per_s']} / {c['refusals_per_s']}",
         f"double claims {r['double_claims']} (churn and contended, {churn['claim_lines']:,} + {c['claim_lines']:,} "
         "claim lines)"],
        [f"etcd requests/s: hosts' liveness ({keep['hosts']['processes']} processes, no pools)",
         f"{keep['hosts']['requests_per_s']}", ", ".join(f"{k} {v}" for k, v in keep["hosts"]["per_method"].items())],
        [f"etcd requests/s keeping {keep['pools']:,} pools alive (beyond the hosts')", f"{keep['pools_requests_per_s']}",
         ", ".join(f"{k} {v}" for k, v in keep["pools_per_method"].items())],
        [f"request p50 at C=1: {small['vms']:,} / {big['vms']:,} VMs", f"{small['request_p50_ms']} / {big['request_p50_ms']} ms",
         f"ratio {r['request_p50_ratio']}, rounds {r['request_p50_ratios']}"],
        [f"with {r['held']['held']:,} pools held: grant p50/p99, request p50",
         f"{loaded['grant_p50_ms']} / {loaded['grant_p99_ms']} ms, {loaded['request_p50_ms']} ms", "renewals running"],
        [f"etcd db size over {churn['cycles']:,} cycles (MiB)", " -> ".join(str(x) for x in churn["db_size_mib"]),
         "in use: " + " -> ".join(str(x) for x in churn["db_in_use_mib"])],
    ]
    lines = [table(rows, ["scale", "figure", "note"]), "", "targets (issue 19):"]
    return "\n".join(lines + [verdict(t) for t in r["targets"]])

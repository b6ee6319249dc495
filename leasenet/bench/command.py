"""`leasenet bench`: run every phase, gather the report, print it (a table, or --json)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from leasenet.bench.calls import calls_problems, run_calls
from leasenet.bench.harness import Bench, machine
from leasenet.bench.measure import CONFIDENCE
from leasenet.bench.plans import DATA_CONSUMERS, DATA_POOL, DATA_VMS, Plan, make_plan
from leasenet.bench.render import render, render_calls
from leasenet.bench.scale import run_scale
from leasenet.bench.scalerender import render_scale, scale_problems
from leasenet.bench.report import (
    correctness, method_check, summarize_datapath, summarize_etcd, summarize_failover, summarize_leasing, targets,
)
from leasenet.console import CliError


def run(workdir: Path, plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    bench = Bench(workdir, plan, say)
    started = time.monotonic()
    try:
        info = machine()
        bench.base()
        load = bench.datapath()
        grants, races = bench.leasing()
        failover_runs = bench.failover()
    finally:
        bench.close()
    datapath = summarize_datapath(load)
    etcd = summarize_etcd(load)
    leasing = summarize_leasing(grants, races)
    failover = summarize_failover(failover_runs)
    claims = bench.double_claims() + leasing["race_violations"]
    found = targets(datapath, etcd, leasing, failover, len(claims))
    return {"machine": info, "event_loop": load.event_loop,
            "settings": {"quick": plan.quick, "runs": plan.runs, "rounds": plan.rounds,
                         "check_rounds": plan.check_rounds, "slice_warmup_s": plan.slice_warmup_s,
                         "slice_s": plan.slice_s, "confidence": CONFIDENCE, "tls": plan.tls, "idle_s": plan.idle_s,
                         "data_vms": DATA_VMS, "consumer_vms": len(DATA_CONSUMERS), "pool_per_consumer_vm": DATA_POOL},
            "datapath": datapath, "etcd": etcd, "leasing": leasing, "failover": failover,
            "double_claims": len(claims), "double_claim_details": claims, "targets": found,
            "correctness": correctness(datapath, leasing, failover, len(claims)), "method": method_check(found) | {"measured": bench.self_check_runs},
            "elapsed_s": round(time.monotonic() - started, 1), "raw": {"slices": asdict(load)["cells"]}}


def cmd_bench(args: argparse.Namespace) -> None:
    if args.runs < 1:
        raise CliError("--runs must be at least 1")
    rounds = args.rounds
    if rounds < 2:
        raise CliError("--rounds must be at least 2 (a ratio needs pairs to take a median of)")
    plan = make_plan(args.quick, args.runs, rounds, tls=args.tls == "on")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="leasenet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(f"[bench] {text}", file=sys.stderr, flush=True)

    if args.scale and args.calls:
        raise CliError("--scale and --calls are two separate runs: give one of them")
    if args.grants_in_flight < 0:
        raise CliError("--grants-in-flight must be at least 1 (0: the default)")
    try:
        if args.scale:
            report = run_scale(workdir, args.quick, say, args.grants_in_flight or None)
        elif args.calls:
            report = run_calls(workdir, args.quick, rounds, say)
        else:
            report = run(workdir, plan, say)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one line for the user; the logs stay in the work dir
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CliError(f"bench failed: {first} (logs in {workdir})") from None
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_scale(report) if args.scale else render_calls(report) if args.calls else render(report))
    if args.calls:
        if args.quick and (problems := calls_problems(report)):
            raise CliError("bench --calls --quick found a problem: " + "; ".join(problems))
        return
    if args.scale:
        if args.quick and (problems := scale_problems(report)):
            raise CliError("bench --scale --quick found a problem: " + "; ".join(problems))
        return
    if args.quick and not report["correctness"]["ok"]:
        raise CliError("bench --quick found a correctness problem: " + "; ".join(report["correctness"]["problems"]))
    if args.quick and not report["method"]["ok"]:
        raise CliError("bench --quick: the method's self-check failed: " + "; ".join(report["method"]["problems"]))

"""Profile the consumer host and the producer host under load with py-spy (bench/PROFILE.md).

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_hosts.py OUTDIR [--cell unary:100:64] [--seconds 8] [--rate 200]

Starts the data-path cluster of `leasenet bench` (etcd, a registry, a producer host with 64 echo
VMs, a consumer host with 4 consumer VMs), drives one overlay cell from the bench's load generator
for longer than the sampling window, and records both hosts with `py-spy record --nonblocking`
(raw collapsed stacks and speedscope JSON in OUTDIR). Then it prints, per host, where the samples
fall: the innermost leasenet frame of each sample (with what it was calling), or else a category
(the grpc poller thread, grpc/event-loop C code, idle)."""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leasenet.bench.harness import Bench  # noqa: E402
from leasenet.bench.plans import (  # noqa: E402
    DATA_CONSUMERS, DATA_SERVICE, DATA_VMS, Cell, LoadResult, make_plan,
)

OURS = ("consumer_host/", "producer_host/", "registry/", "leasenet/")


def _frame(text: str) -> tuple[str, str]:
    m = re.match(r"(.*) \((.*):\d+\)$", text)
    return (m.group(1), m.group(2)) if m else (text, "")


def categorize(stack: list[str]) -> str:
    frames = [_frame(f) for f in stack]
    ours = [i for i, (_, path) in enumerate(frames)
            if any(o in path for o in OURS) and not path.endswith(("cli.py", "__main__.py"))]
    if ours:
        fn, path = frames[ours[-1]]
        below = [p for _, p in frames[ours[-1] + 1:]]
        tag = ("grpc" if any("grpc" in p for p in below) else "asyncio" if any("asyncio" in p for p in below)
               else Path(below[-1]).name if below else "own code")
        return f"{'/'.join(Path(path).parts[-2:])}:{fn} [{tag}]"
    fn, path = frames[-1]
    if "threading" in path:
        return "(grpc poller thread)"
    if "selectors" in path:
        return "(idle in epoll)"
    if "grpc" in path:
        return f"(grpc python: {Path(path).name}:{fn})"
    return "(C code under the event loop: grpc cython, protobuf, uvloop)"


def summary(raw: Path, top: int = 25) -> str:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[categorize(stack.split(";"))] += int(n)
    total = sum(counts.values()) or 1
    return "\n".join([f"{total} samples"] + [f"{100 * n / total:5.1f}%  {k}" for k, n in counts.most_common(top)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir")
    parser.add_argument("--cell", default="unary:100:64", help="mode:payload:concurrency")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=200)
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    mode, payload, conc = args.cell.split(":")
    bench = Bench(out / "cluster", make_plan(False, 1), lambda text: print(f"[profile] {text}", file=sys.stderr))
    try:
        bench.base()
        plain, registry = bench.plaintext_cluster()  # the plaintext overlay, as in the bench's main tables
        procs = bench.start({"p-data": bench.producer("p-data", DATA_SERVICE, DATA_VMS, "10.7.10.1", False),
                             "c-data": bench.consumer("c-data", DATA_CONSUMERS, registry)}, plain)
        addresses = {"overlay": procs["c-data"].address}
        warmup = [Cell("overlay", "unary", 100, 64, 0.0, 1.0)]
        bench.role("warmup", bench.load_task(addresses, warmup, {}, ""), LoadResult, 120)
        cell = Cell("overlay", mode, int(payload), int(conc), 1.0, args.seconds + 2.0)
        result: dict[str, LoadResult] = {}
        load = threading.Thread(target=lambda: result.update(
            load=bench.role("load", bench.load_task(addresses, [cell], {}, ""), LoadResult, 300)))
        load.start()
        threading.Event().wait(1.5)
        spies = []
        for name in ("c-data", "p-data"):
            pid = str(procs[name].process.pid)  # type: ignore[union-attr]
            for fmt in ("raw", "speedscope"):
                spies.append(subprocess.Popen([pyspy, "record", "--pid", pid, "--nonblocking", "--rate",
                                               str(args.rate), "--duration", str(int(args.seconds)), "--format", fmt,
                                               "--output", str(out / f"{name}.{fmt}")],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for spy in spies:
            spy.wait()
        load.join()
        c = result["load"].cells[0]
        print(f"overlay {args.cell}: {c.rps} req/s, p50 {c.p50_ms} ms, p99 {c.p99_ms} ms")
        for name, label in (("c-data", "consumer host"), ("p-data", "producer host")):
            print(f"\n== {label} ({out / (name + '.speedscope')})\n{summary(out / (name + '.raw'))}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()

"""What per-host identities cost etcd (issue 22): one user and one role per host. Enrols producer
hosts into a fresh one-member etcd with TLS and auth, in steps up to --hosts, and at each step
measures the time to enrol one more host and the latency of a host's own put and of a read (etcd
checks every request against the caller's permissions: does that grow with the number of users?).

    .venv/bin/python bench/etcd_identities.py --hosts 1000 --steps 1,100,500,1000 --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from leasenet import certs
from leasenet.etcd import EtcdCluster, enrol
from mapping import keys
from mapping.store.etcd import EtcdStore
from wire.tls import Identity, Kind, TlsFiles


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"p50 {statistics.median(ordered) * 1e3:.2f} ms, p99 {ordered[int(len(ordered) * 0.99) - 1] * 1e3:.2f} ms"


async def measure(endpoints: list[str], tls_dir: Path, root: TlsFiles, hosts: int, steps: list[int],
                  requests: int) -> None:
    measured = Identity(Kind.PRODUCER, "h0")
    certs.make_dev(tls_dir, [measured])
    store = None
    enrolled = 0
    for step in steps:
        started = time.perf_counter()
        tail: list[float] = []
        while enrolled < step:
            one = time.perf_counter()
            await enrol(endpoints, root.load(), Identity(Kind.PRODUCER, f"h{enrolled}"))
            tail.append(time.perf_counter() - one)
            enrolled += 1
        took = time.perf_counter() - started
        if store is None:
            store = await EtcdStore(endpoints, timeout_s=10, tls=TlsFiles.in_dir(tls_dir, measured).load()).connect()
        key = keys.VMS + "h0/blue/10.1.1.1"
        puts, gets = [], []
        for _ in range(requests):
            t = time.perf_counter()
            await store.put(key, b'{"host_id":"h0","service":"echo","handler":"echo"}')
            puts.append(time.perf_counter() - t)
            t = time.perf_counter()
            await store.get(key)
            gets.append(time.perf_counter() - t)
        last = tail[-min(len(tail), 20):] if tail else []
        print(f"{step:>5} hosts enrolled ({took:.1f} s for this step; one enrolment now {ms(last) if last else '-'}): "
              f"own put {ms(puts)}; get {ms(gets)}", flush=True)
    if store is not None:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--steps", default="1,100,500,1000")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    steps = sorted(int(s) for s in args.steps.split(",") if int(s) <= args.hosts)
    with tempfile.TemporaryDirectory(prefix="leasenet-identities-") as work:
        tls_dir = Path(work) / "tls"
        etcd_identity = Identity(Kind.ETCD, "bench")
        certs.make_dev(tls_dir, [etcd_identity])
        root = TlsFiles.in_dir(tls_dir, etcd_identity)
        etcd = EtcdCluster(Path(work), tls=root).start()
        try:
            asyncio.run(measure(etcd.client_urls, tls_dir, root, args.hosts, steps, args.requests))
        finally:
            etcd.stop()


if __name__ == "__main__":
    main()

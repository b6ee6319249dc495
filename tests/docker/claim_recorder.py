"""Claim recorder for the docker deployment test. It runs INSIDE a leasenet:latest container on
the deployment's internal network (etcd is not published to the host), follows etcd through a
Replica (gap-free, resumes after an outage, reloads after compaction) and prints one JSON line
per claim and pool created or deleted, in the format leasenet/checker.py reads as `claims`
(the same lines as the chaos suite's ClaimRecorder). A {"event": "synced"} line (ignored by the
checker) says the initial state has been read. Times are time.monotonic_ns(): containers share
the host's monotonic clock, so they compare with the traffic and producer histories.

    docker run --rm --init --network PROJECT_core -v THIS_FILE:/recorder.py:ro \
        -v docker/certs/operator:/etc/leasenet-tls:ro --entrypoint python leasenet:latest /recorder.py \
        https://etcd1:2379,https://etcd2:2379,https://etcd3:2379 /etc/leasenet-tls

It reads etcd over mutual TLS as operator/admin (the etcd role leasenet-operator: read-only).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from mapping import keys
from mapping.model import Claim, Pool, Record
from mapping.replica import Replica
from mapping.store.etcd import EtcdStore
from wire.rpc import split_addresses
from wire.tls import Identity, Kind, TlsFiles


def write(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def record(endpoints: list[str], tls_dir: str) -> None:
    store = await EtcdStore(endpoints, tls=TlsFiles.in_dir(tls_dir, Identity(Kind.OPERATOR, "admin")).load()).connect()
    replica = Replica(store)

    def on_change(key: str, old: Record | None, new: Record | None, revision: int) -> None:
        if keys.is_member_key(key):
            return  # a claim's mirror under its pool: the claim itself is recorded
        now = time.monotonic_ns()
        if isinstance(old, Claim) and (new is None or (isinstance(new, Claim) and new.revision != old.revision)):
            write({"event": "released", "vm": old.vm, "token": old.revision, "revision": revision, "seen_ns": now})
        if isinstance(new, Claim):
            write({"event": "claimed", "vm": new.vm, "token": new.revision, "lease_id": format(new.lease_id, "x"),
                   "consumer_vm": new.consumer_vm, "consumer_host": new.consumer_host, "revision": revision,
                   "producer_host": new.host_id, "seen_ns": now})
        if isinstance(old, Pool) and new is None:
            write({"event": "pool-ended", "lease_id": format(old.lease_id, "x"), "revision": revision,
                   "seen_ns": now})
        if isinstance(new, Pool) and old is None:
            write({"event": "pool-granted", "lease_id": format(new.lease_id, "x"), "consumer_vm": new.consumer_vm,
                   "consumer_host": new.consumer_host, "revision": revision, "seen_ns": now})

    replica.subscribe(on_change)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    write({"event": "synced", "revision": replica.revision, "seen_ns": time.monotonic_ns()})
    await task  # until the container is stopped


if __name__ == "__main__":
    asyncio.run(record(split_addresses(sys.argv[1], "etcd endpoint"), sys.argv[2]))

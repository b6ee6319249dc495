"""What the scale bench's processes watch: light hosts, and the claim history the checker reads.

A light host (`python -m leasenet.bench light-host LISTEN READY_FILE KIND HOST_ID ETCD_ENDPOINTS`):
what a producer or consumer host costs the control plane when it only registers and watches. It
registers its host record under a liveness lease (kept alive as every host keeps its own) and runs
a replica over what a host of its kind watches, with metrics off as in the bench's hosts; it serves
nothing. `bench --scale` starts tens of them to count etcd's watch events per grant at 10 and at
40 hosts: what matters there is how many watchers there are and what each is sent.

What a host of a kind watches is the one thing that differs between key layouts: all of ROOT
before the scoped replicas (issue 19), `mapping.scopes.watch_prefixes(kind, host_id)` after."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from leasenet.bench.measure import cluster_tls
from mapping import keys
from mapping.liveness import Liveness
from mapping.model import Claim, Host, HostId, HostKind, Record
from mapping.replica import Replica
from mapping.store import Store
from mapping.store.etcd import EtcdStore
from wire import metrics
from wire.tls import Identity, Kind

try:  # the scoped replicas of issue 19
    from mapping.scopes import watch_prefixes
except ImportError:  # every process watches all of ROOT
    watch_prefixes = None

LIVENESS_TTL_S = 3  # the hosts' default (--liveness-ttl)
# a light host serves nothing; its record still names an address, as every host record does
LIGHT_ADDRESS = "127.0.0.1:9"


def host_replica(store: Store, kind: HostKind, host_id: HostId) -> Replica:
    """The replica a host of `kind` keeps: the one line that follows the key layout."""
    return Replica(store) if watch_prefixes is None else Replica(store, prefixes=watch_prefixes(kind, host_id))


def claims_replica(store: Store) -> Replica:
    """A replica of the claims alone (whatever the layout, they share one prefix)."""
    return Replica(store, prefix=keys.CLAIMS) if watch_prefixes is None else Replica(store, prefixes=(keys.CLAIMS,))


def scoped() -> bool:
    """Whether hosts watch only what concerns them (the layout of issue 19) in this build."""
    return watch_prefixes is not None


async def light_host(listen: str, ready_file: str, kind: str, host_id: str, endpoints: str) -> None:
    """Register, watch, and stay until SIGTERM; `listen` is unused (nothing is served)."""
    metrics.turn_off()
    host_kind, name = HostKind(kind), HostId(host_id)
    tls = cluster_tls(Identity(Kind(kind), host_id))
    store = await EtcdStore(endpoints.split(","), timeout_s=30, tls=tls).connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    replica = host_replica(store, host_kind, name)
    liveness = Liveness(store, name, lambda: [Host(name, host_kind, LIGHT_ADDRESS)], LIVENESS_TTL_S)
    try:
        async with asyncio.TaskGroup() as tasks:
            watching = tasks.create_task(replica.run(), name="replica")
            await replica.synced.wait()
            await liveness.register()
            keep_alive = tasks.create_task(liveness.keep_alive(), name="liveness")
            tmp = Path(ready_file).with_suffix(".tmp")
            tmp.write_text(json.dumps({"address": LIGHT_ADDRESS, "pid": os.getpid()}))
            tmp.replace(ready_file)
            await stop.wait()
            await liveness.deregister(keep_alive)
            watching.cancel()
    finally:
        await store.close()


class ClaimHistory:
    """The claims' history as `leasenet.checker.claims_from_lines` reads it ("claimed" and
    "released" lines with their fencing tokens), from a replica of the claims in etcd: what a run
    follows for double claims without asking a registry (whose CPU the bench measures)."""

    def __init__(self, store: Store) -> None:
        self.lines: list[dict[str, object]] = []
        self.replica = claims_replica(store)
        self.replica.subscribe(self._on_change)

    def holds(self, consumer_host: str) -> bool:
        """Whether a claim leased for `consumer_host` is still alive in the replica."""
        return any(c.consumer_host == consumer_host for c in self.replica.state.claims.values())

    def _on_change(self, key: str, old: Record | None, new: Record | None, revision: int) -> None:
        now = time.monotonic_ns()
        if isinstance(old, Claim) and (new is None or (isinstance(new, Claim) and new.revision != old.revision)):
            self.lines.append({"event": "released", "vm": old.vm, "token": old.revision, "revision": revision,
                               "seen_ns": now})
        if isinstance(new, Claim) and (old is None or not isinstance(old, Claim) or old.revision != new.revision):
            self.lines.append({"event": "claimed", "vm": new.vm, "token": new.revision, "lease_id": pool_of(new),
                               "consumer_vm": new.consumer_vm, "consumer_host": new.consumer_host,
                               "revision": revision, "seen_ns": now})


def pool_of(claim: Claim) -> str:
    """The pool a claim belongs to, as text (its etcd lease before issue 19, its pool id after)."""
    pool = getattr(claim, "lease_id", None) or getattr(claim, "pool", "")
    return format(pool, "x") if isinstance(pool, int) else str(pool)

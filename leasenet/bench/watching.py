"""The claims' history the scale bench checks for double claims: what it follows in etcd itself,
so that no registry (whose CPU the bench measures) serves it."""

from __future__ import annotations

import time

from mapping import keys
from mapping.model import Claim, Record
from mapping.replica import Replica
from mapping.store import Store


class ClaimHistory:
    """The claims' history as `leasenet.checker.claims_from_lines` reads it ("claimed" and
    "released" lines with their fencing tokens), from a replica of the claims in etcd: what a run
    follows for double claims without asking a registry (whose CPU the bench measures)."""

    def __init__(self, store: Store) -> None:
        self.lines: list[dict[str, object]] = []
        self.replica = Replica(store, prefixes=(keys.CLAIMS,))
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
            self.lines.append({"event": "claimed", "vm": new.vm, "token": new.revision, "lease_id": format(new.lease_id, "x"),
                               "consumer_vm": new.consumer_vm, "consumer_host": new.consumer_host,
                               "revision": revision, "seen_ns": now})

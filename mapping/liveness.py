"""A host's own records in etcd, under one liveness lease (SPEC §5): if the host dies, the lease
lapses and its records vanish; everyone watching learns it. Used by both host kinds.

Two ways VM records get there, both here: in bulk with the host record (in-process VMs, thousands
of them, always ready), or one by one as each VM becomes healthy (`add`, a VM process or endpoint:
the host registers first, then each VM record) and out again when it fails (`withdraw`). Every
write of a host's records takes one lock, so a re-registration after a lapsed lease sees the VMs
that are registered at that moment, and no per-VM write slips between its chunks.

VM records are keyed by their host (only it may write them), so nothing in etcd stops two hosts
registering one address. First wins: the registries' replicas use the oldest record of an address
(mapping/state.py), so no grant ever claims the younger, and a registry says so in one line naming
both hosts (registry/leasing.py). A producer host watches only its own records (mapping/scopes.py)
and does not see the other's."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

from mapping import keys
from mapping.model import Host, HostId, ProducerVm, Record
from mapping.store import MAX_TXN_OPS, Compacted, Require, Store
from mapping.store.keeper import LeaseKeeper, renewal_period
from wire import metrics
from wire.errors import ClaimConflict, InvalidRequest, StoreUnavailable

log = logging.getLogger(__name__)

PREVIOUS_LIFE_GRACE_S = 1.0  # beyond the TTL: etcd expires leases on its own clock, a little late


class DuplicateHost(ClaimConflict):
    """Another live process registered this host id (or one of its keys): refused at start."""


class Liveness:
    def __init__(self, store: Store, host_id: HostId, records: Callable[[], Sequence[Record]], ttl_s: int) -> None:
        self.store = store
        self.host_id = host_id
        self.records = records  # called on every (re-)registration: records may change (draining)
        self.ttl_s = ttl_s
        self.lease_id = 0
        self.registrations = 0
        self.keeper = LeaseKeeper(store)
        self.revisions: dict[str, int] = {}  # create revision of each record we wrote (its incarnation)
        self.written = 0  # the revision of our last write: a replica past it has seen every older record
        self._writing = asyncio.Lock()  # one write of the host's records at a time

    async def register(self) -> None:
        async with self._writing:
            await self._register()

    async def _register(self) -> None:
        """Create every record under a new liveness lease, in transactions of at most etcd's limit
        (a host may have thousands of VMs). The host record goes last: until it exists no one can
        route to the VMs already written, so a half-registered host is never used. Every key is
        created only where none exists (create_revision == 0): a conflict revokes our lease, which
        takes every chunk written so far with it, waits for the holder's lease to lapse (a previous
        life of this host, killed before its lease did) and starts again; a holder that stays alive
        is another process with our host id, and registering fails with one sentence, its records
        untouched."""
        records = sorted(self.records(), key=lambda r: isinstance(r, Host))
        for _ in range(3):
            self.lease_id = await self.store.grant_lease(self.ttl_s)
            items = [(keys.key_of(r), keys.encode(self._stamped(r))) for r in records]
            chunks = [items[i:i + MAX_TXN_OPS] for i in range(0, len(items), MAX_TXN_OPS)]
            self.revisions.clear()
            if await self._create_chunks(chunks):
                self.registrations += 1
                log.info("host %s registered %d record(s) in %d transaction(s) under lease %x", self.host_id,
                         len(items), len(chunks), self.lease_id)
                return
            await self.store.revoke_lease(self.lease_id)
            await self._wait_for_previous_life(items)
        raise InvalidRequest(f"host {self.host_id} cannot register: its records keep conflicting")

    def _stamped(self, record: Record) -> Record:
        """A host record names its liveness lease and TTL: a consumer host's pools hang on that lease."""
        return dataclasses.replace(record, lease=self.lease_id, ttl_s=self.ttl_s) if isinstance(record, Host) else record

    async def _create_chunks(self, chunks: list[list[tuple[str, bytes]]]) -> bool:
        for i, chunk in enumerate(chunks):
            # thousands of VMs on a busy machine can take longer than the TTL: keep the lease alive
            if i and await self.store.refresh_lease(self.lease_id) <= 0:
                return False
            if not (created := await self.store.create_all(chunk, lease=self.lease_id)).succeeded:
                return False
            self.revisions.update((key, created.revision) for key, _ in chunk)
            self.written = max(self.written, created.revision)
        return True

    async def add(self, vm: ProducerVm) -> int | None:
        """Register one VM record under the liveness lease, only where none exists; its create
        revision (the new incarnation), or None before the host has registered. A record left by a
        previous life of this host is waited out, as at registration. StoreUnavailable (etcd away,
        or the lease gone: the keep-alive then registers anew, with every serving VM) is the
        caller's to retry."""
        key = keys.key_of(vm)
        async with self._writing:
            if not self.registrations:
                return None
            for _ in range(2):
                if key in self.revisions:  # a re-registration brought it back already
                    return self.revisions[key]
                created = await self.store.create_all([(key, keys.encode(vm))], lease=self.lease_id)
                if created.succeeded:
                    self.revisions[key] = created.revision
                    self.written = max(self.written, created.revision)
                    return created.revision
                await self._wait_for_previous_life([(key, b"")])
            return None

    async def withdraw(self, vm: ProducerVm) -> bool:
        """Delete the VM's record now, only the incarnation we wrote (a guarded delete): its claim
        turns stale and its pool refills elsewhere. False when there was none to delete."""
        key = keys.key_of(vm)
        async with self._writing:
            revision = self.revisions.get(key)
            if revision is None:
                return False
            deleted = await self.store.delete(key, require=[Require(key, revision)])  # StoreUnavailable: retry
            del self.revisions[key]
            return deleted.succeeded

    async def update_vm(self, vm: ProducerVm) -> bool:
        """Overwrite the VM's record (the `used` mark), keeping its create revision and so its
        incarnation and every claim's fencing; never brings back a record that was withdrawn."""
        key = keys.key_of(vm)
        async with self._writing:
            revision = self.revisions.get(key)
            if revision is None:
                return False
            return (await self.store.update(key, keys.encode(vm), lease=self.lease_id,
                                            require=[Require(key, revision)])).succeeded

    async def _wait_for_previous_life(self, items: list[tuple[str, bytes]]) -> None:
        """Wait until the first of our keys someone holds is gone: its lease lapses within one TTL
        unless a live process keeps renewing it. Records of another host are a configuration error."""
        for key, _ in items:
            held = await self.store.get(key)
            if held is None:
                continue
            owner = getattr(keys.decode(key, held.value, held.create_revision), "host_id", None)
            if owner != self.host_id:
                raise DuplicateHost(f"host {self.host_id} cannot register: {key} is registered by host {owner}")
            try:
                async with asyncio.timeout(self.ttl_s + PREVIOUS_LIFE_GRACE_S):
                    await self._deleted(key, held.mod_revision + 1)
            except TimeoutError:
                raise DuplicateHost(f"host id {self.host_id!r} is already in use by a live process ({key} has been "
                                    f"kept alive for more than its {self.ttl_s} s TTL): stop that process or choose "
                                    "another --host-id") from None
            return

    async def _deleted(self, key: str, since: int) -> None:
        while True:
            try:
                async for batch in self.store.watch(key, since):
                    if any(event.key == key and event.value is None for event in batch.events):
                        return
            except Compacted as exc:  # the deletion may be among what was compacted: look again
                if await self.store.get(key) is None:
                    return
                since = exc.compact_revision + 1

    async def keep_alive(self) -> None:
        """Keep the lease alive through the keeper (every TTL/3, on the process's one keep-alive
        stream); if it lapsed (a long etcd outage, a SIGSTOP), register anew."""
        while True:
            await self.keeper.run(until=self.keeper.hold(self.lease_id, self.ttl_s))
            metrics.KEEPALIVE_FAILURES.inc()
            log.warning("liveness lease of host %s lapsed; registering again", self.host_id)
            await self._register_again()

    async def _register_again(self) -> None:
        while True:
            try:
                await self.register()
                return
            except StoreUnavailable as exc:
                metrics.KEEPALIVE_FAILURES.inc()
                log.warning("cannot register host %s again: %s", self.host_id, exc)
                await asyncio.sleep(renewal_period(self.ttl_s))

    async def update(self, record: Record) -> None:
        async with self._writing:
            await self.store.put(keys.key_of(record), keys.encode(self._stamped(record)), lease=self.lease_id)

    async def deregister(self, keep_alive: asyncio.Task[None] | None = None) -> None:
        """Revoke the lease, so that our records vanish now rather than at the TTL. Its keep-alive
        task is cancelled first: finding the lease gone, it would register again."""
        if keep_alive is not None:
            keep_alive.cancel()
        if not self.registrations:
            return
        try:
            await self.store.revoke_lease(self.lease_id)
        except StoreUnavailable as exc:
            # etcd refuses to revoke a lease carrying keys we may not write (a consumer host's pools,
            # which registries write, when a release failed): our own records go now, the rest at the TTL
            log.warning("host %s could not revoke its liveness lease (%s); deleting its own records, the keys of "
                        "others on that lease go at its TTL", self.host_id, exc)
            own = list(self.revisions)
            for i in range(0, len(own), MAX_TXN_OPS):
                await self.store.delete_all(own[i:i + MAX_TXN_OPS])

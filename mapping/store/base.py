"""The project's own small store interface. Two backends implement it: `etcd.EtcdStore` (the real
one) and `memory.MemoryStore` (unit tests); `tests/contract/` runs one suite against both.

Every method raises `wire.errors.StoreUnavailable` when the backend cannot be reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from wire.errors import InvalidRequest, StoreUnavailable


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    items: list[KeyValue]


@dataclass(frozen=True, slots=True)
class Page:
    """One range of a prefix at one revision: keys in order, `more` when keys follow the last."""

    revision: int
    items: list[KeyValue]
    more: bool


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: str
    value: bytes | None  # None: the key was deleted (or its lease expired)
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int  # every event up to this revision has been delivered
    events: list[WatchEvent]


@dataclass(frozen=True, slots=True)
class Require:
    """A transaction guard: `key` exists with exactly this create revision (0: it does not exist)."""

    key: str
    create_revision: int


class TxnResult(NamedTuple):
    succeeded: bool
    revision: int  # the transaction's revision on success; the store's current revision on conflict


class Compacted(Exception):
    """The watch start revision was compacted away: reload from a fresh snapshot."""

    def __init__(self, compact_revision: int, why: str = "") -> None:
        super().__init__(why or f"history was compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


class BacklogTooLarge(Compacted):
    """The events since the watch start do not fit in one message: reload in pages instead."""

    def __init__(self, start_revision: int) -> None:
        super().__init__(start_revision, f"the events since revision {start_revision} exceed one message")


# Keys per range of a snapshot: our values are under 1 KiB, so a page stays far below any gRPC
# message limit however big the keyspace grows (one unpaginated range stopped hosts at ~12k VMs).
SNAPSHOT_PAGE_KEYS = 1000
# a snapshot whose first revision is compacted away while the rest is read starts again, this often
SNAPSHOT_ATTEMPTS = 3

# etcd's default --max-txn-ops: a transaction's compares and its puts are each limited to this many
MAX_TXN_OPS = 128


def check_txn_size(items: Sequence[tuple[str, bytes]], require: Sequence[Require],
                   puts: Sequence[tuple[str, bytes]] = ()) -> None:
    """Refuse, before sending, a transaction etcd would refuse (it limits the compares and the
    operations each to MAX_TXN_OPS): callers sized by the fleet chunk."""
    if len(items) + len(require) > MAX_TXN_OPS or len(items) + len(puts) > MAX_TXN_OPS:
        raise InvalidRequest(f"a transaction of {len(items) + len(puts)} keys and {len(require)} guards exceeds "
                             f"etcd's limit of {MAX_TXN_OPS} operations")


class Store(Protocol):
    requests: int  # requests sent to the backend so far (for `leasenet bench`)

    async def snapshot(self, prefix: str, *, page_size: int = SNAPSHOT_PAGE_KEYS) -> Snapshot:
        """Every key under `prefix` at one revision, read in ranges of `page_size` keys."""
        ...

    async def range_page(self, prefix: str, *, after: str = "", revision: int = 0, limit: int) -> Page:
        """Up to `limit` keys under `prefix` greater than `after`, in key order, at `revision` (0: the
        current one). Raises Compacted when `revision` was compacted away."""
        ...

    async def get(self, key: str) -> KeyValue | None: ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Returns the revision of the write."""
        ...

    async def update(self, key: str, value: bytes, *, lease: int = 0, require: Sequence[Require] = ()) -> TxnResult:
        """Overwrite `key`, keeping its create revision, if every guard holds (a guard naming `key`
        makes it an update of that incarnation only: never a write that brings back a deleted key)."""
        ...

    async def delete(self, key: str, *, require: Sequence[Require] = ()) -> TxnResult:
        """Delete `key` if every guard holds; not succeeded when a guard failed or nothing was there."""
        ...

    async def delete_all(self, keys: Sequence[str], *, require: Sequence[Require] = ()) -> TxnResult:
        """Delete every one of `keys` that exists, in one transaction, only if every `require` holds;
        succeeded is whether they held (keys already gone are fine: a release is idempotent)."""
        ...

    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0,
                         require: Sequence[Require] = (), puts: Sequence[tuple[str, bytes]] = ()) -> TxnResult:
        """Create every key in one atomic transaction, only if none of them exists and every guard
        holds; `puts` are written in the same transaction without the first condition (index keys
        whose uniqueness follows from an item's). On success the revision is each key's create revision. Sent exactly once: a
        transaction is never retried blindly. More than MAX_TXN_OPS keys and guards together raise
        InvalidRequest (etcd's limit)."""
        ...

    async def grant_lease(self, ttl_s: int) -> int: ...

    async def refresh_lease(self, lease_id: int) -> int:
        """Keep the lease alive once; the remaining TTL, 0 when it has expired or was revoked."""
        ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Events from `start_revision` on, in revision order, batched as the backend delivers them
        (a batch may be empty: a progress mark). Raises Compacted when start_revision is gone."""
        ...

    async def close(self) -> None: ...


class _Ranges(Protocol):
    async def range_page(self, prefix: str, *, after: str = "", revision: int = 0, limit: int) -> Page: ...


async def paged_snapshot(store: _Ranges, prefix: str, page_size: int) -> Snapshot:
    """A snapshot as pages: the first at the current revision, the others at that same revision, each
    continuing after the last key, so the pages form one consistent snapshot. If compaction overtakes
    the first page's revision meanwhile, start again at the current one."""
    if page_size < 1:
        raise InvalidRequest(f"a snapshot page holds at least one key, not {page_size}")
    for _ in range(SNAPSHOT_ATTEMPTS):
        first = await store.range_page(prefix, limit=page_size)
        items, page = list(first.items), first
        try:
            while page.more:
                page = await store.range_page(prefix, after=items[-1].key, revision=first.revision, limit=page_size)
                items.extend(page.items)
        except Compacted:
            continue
        return Snapshot(first.revision, items)
    raise StoreUnavailable(f"etcd compacted the snapshot of {prefix} away {SNAPSHOT_ATTEMPTS} times while it was read")

"""Group commit (issue 19 item 3): a registry's grants in flight that reach etcd while its earlier
transactions are still out go together, in one transaction, as do its releases. Each transaction
costs etcd, the registry, and every watcher of the keys (each registry, the consumer host, the
producer hosts) a round of messages whatever it carries, so under load a batch of k grants costs
them about 1/k of it per grant. Nothing waits to be batched: a grant that finds no transaction of
its kind out goes at once, alone; one that finds one out waits for it (a round trip to etcd) and
goes with whatever queued meanwhile. One out at a time made batches of ~3.5 grants under the
bench's load, two out ~2.3, for ~5% more of the registries' CPU (bench/PROFILE.md).

Safe to combine: the parts of a batch write disjoint keys (a part whose keys meet the batch's
waits for the next), and each part's compares are about keys no other part writes (its own keys'
absence, VM and host records, its own pool's revision), so the batch succeeds exactly when every
part alone would have. When it fails (some part lost a race), each part is sent again alone and
hears its own outcome. A successful batch gives each part its revision: the claims of several
pools then share a create revision, which is still each VM's fencing token (it grows per VM)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from mapping.store.base import MAX_TXN_OPS, Require, Store, TxnResult

MAX_IN_FLIGHT = 1  # transactions of one kind out at once; later parts queue and go together
MAX_PARTS = 8  # a grant of a pool of n VMs is 3n compares: 8 pools of 4 stay under etcd's 128


@dataclass(slots=True)
class _Part:
    items: Sequence[tuple[str, bytes]]  # created (each must be absent), or deleted (value unused)
    puts: Sequence[tuple[str, bytes]]
    require: Sequence[Require]
    keys: frozenset[str]
    done: asyncio.Future[TxnResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(slots=True)
class _Batch:
    parts: list[_Part] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    compares: int = 0
    ops: int = 0

    def takes(self, part: _Part) -> bool:
        if part.keys & self.keys or len(self.parts) >= MAX_PARTS:
            return False
        compares = self.compares + len(part.items) + len(part.require)
        ops = self.ops + len(part.items) + len(part.puts)
        if self.parts and (compares > MAX_TXN_OPS or ops > MAX_TXN_OPS):
            return False
        self.parts.append(part)
        self.keys |= part.keys
        self.compares, self.ops = compares, ops
        return True


class GroupCommit:
    """`create_all` and `delete_all` of the Store, combined with others of their kind in flight.
    Creates combine only on one lease (a transaction's puts here carry one)."""

    def __init__(self, store: Store, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.store = store
        self.max_in_flight = max_in_flight
        self._queues: dict[tuple[str, int], deque[_Part]] = {}  # ("create", lease) or ("delete", 0)
        self._out: dict[str, int] = {"create": 0, "delete": 0}
        self.batches = 0  # transactions that carried more than one part (for the bench)
        self._sending: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int,
                         require: Sequence[Require], puts: Sequence[tuple[str, bytes]] = ()) -> TxnResult:
        part = _Part(items, puts, require, frozenset(k for k, _ in (*items, *puts)))
        return await self._submit(("create", lease), part)

    async def delete_all(self, keys: Sequence[str], *, require: Sequence[Require]) -> TxnResult:
        unique = list(dict.fromkeys(keys))
        return await self._submit(("delete", 0), _Part([(k, b"") for k in unique], (), require, frozenset(unique)))

    async def _submit(self, queue: tuple[str, int], part: _Part) -> TxnResult:
        self._queues.setdefault(queue, deque()).append(part)
        self._pump(queue[0])
        return await asyncio.shield(part.done)  # a caller that gives up does not unsend its part

    def _pump(self, kind: str) -> None:
        while self._out[kind] < self.max_in_flight:
            queue = next((q for q in self._queues if q[0] == kind), None)
            if queue is None:
                return
            waiting = self._queues.pop(queue)
            batch, later = _Batch(), deque()
            for part in waiting:
                if not batch.takes(part):
                    later.append(part)
            if later:  # behind the other leases' queues now: each lease gets its turn
                self._queues[queue] = later
            self._out[kind] += 1
            task = asyncio.get_running_loop().create_task(self._send(queue, batch.parts))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, queue: tuple[str, int], parts: list[_Part]) -> None:
        try:
            if len(parts) == 1:
                _settle(parts[0], await self._alone(queue, parts[0]))
                return
            self.batches += 1
            result = await self._transact(queue, [x for p in parts for x in p.items], [x for p in parts for x in p.puts],
                                          [r for p in parts for r in p.require])
            if result.succeeded:
                for part in parts:
                    _settle(part, result)
                return
            outcomes = await asyncio.gather(*(self._alone(queue, p) for p in parts), return_exceptions=True)
            for part, outcome in zip(parts, outcomes):
                _settle(part, outcome)
        except Exception as exc:  # etcd unavailable: every part of the batch hears it
            for part in parts:
                _settle(part, exc)
        except asyncio.CancelledError:  # the registry stops: nobody waits alone for ever
            for part in parts:
                part.done.cancel()
            raise
        finally:
            self._out[queue[0]] -= 1
            self._pump(queue[0])

    async def _alone(self, queue: tuple[str, int], part: _Part) -> TxnResult:
        return await self._transact(queue, part.items, part.puts, part.require)

    async def _transact(self, queue: tuple[str, int], items: Sequence[tuple[str, bytes]],
                        puts: Sequence[tuple[str, bytes]], require: Sequence[Require]) -> TxnResult:
        kind, lease = queue
        if kind == "delete":
            return await self.store.delete_all([k for k, _ in items], require=require)
        return await self.store.create_all(items, lease=lease, require=require, puts=puts)


def _settle(part: _Part, outcome: TxnResult | BaseException) -> None:
    if part.done.done():
        return
    if isinstance(outcome, BaseException):
        part.done.set_exception(outcome)
    else:
        part.done.set_result(outcome)

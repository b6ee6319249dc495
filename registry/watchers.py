"""WatchLeases subscribers, bounded (SPEC §10: every queue bounded). A registry serves at most
`max_watchers` at once; each subscriber's backlog of key changes not yet sent holds at most
`backlog` of them. A subscriber that falls further behind (it reads slower than leases change) is
ended with RESOURCE_EXHAUSTED and a sentence, rather than buffered without end: it may watch again,
starting from a fresh list of the leases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from wire.errors import Overloaded

T = TypeVar("T")

DEFAULT_MAX_WATCHERS = 64
DEFAULT_BACKLOG = 10_000  # key changes; a grant of a pool of 4 is 8 (pool, claims, quota slots)


@dataclass(frozen=True, slots=True)
class WatchLimits:
    max_watchers: int = DEFAULT_MAX_WATCHERS
    backlog: int = DEFAULT_BACKLOG

    def __post_init__(self) -> None:
        if self.max_watchers < 1 or self.backlog < 1:
            raise ValueError(f"watch limits must be at least 1, got {self.max_watchers} watchers and a backlog "
                             f"of {self.backlog}")


class Backlog(Generic[T]):
    """The changes one subscriber has yet to be sent; `offer` never blocks and never grows it past
    its limit: the change that does not fit marks the subscriber as too slow."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.overflowed = False
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def offer(self, item: T) -> None:
        if self.overflowed:
            return
        if self._queue.qsize() >= self.limit:
            self.overflowed = True  # the queue is not empty, so a reader is not left waiting
            return
        self._queue.put_nowait(item)

    async def next_batch(self) -> list[T]:
        """Every change waiting (at least one), or Overloaded once the backlog overflowed."""
        first = await self._queue.get()
        items = [first] + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        if self.overflowed:
            raise Overloaded(f"this lease watcher fell more than {self.limit} changes behind (it reads slower than "
                             "leases change) and was ended; watch again to start from the current leases",
                             reason="watch_backlog")
        return items


class Watchers:
    """How many WatchLeases streams a registry serves; one more than its limit is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.count >= self.limit:
            raise Overloaded(f"this registry already serves {self.count} lease watchers, its limit; try another "
                             "registry or later", reason="watchers")
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1

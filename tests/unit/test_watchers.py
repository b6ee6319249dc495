"""WatchLeases subscribers bounded (registry/watchers.py): a backlog that overflows ends its
subscriber with RESOURCE_EXHAUSTED, and a registry refuses subscribers beyond its cap."""

from __future__ import annotations

import pytest

from registry.watchers import Backlog, Watchers, WatchLimits
from wire.errors import Overloaded, Status


async def test_a_subscriber_within_its_backlog_gets_every_change_in_one_batch() -> None:
    backlog: Backlog[int] = Backlog(3)
    for n in range(3):
        backlog.offer(n)
    assert await backlog.next_batch() == [0, 1, 2]


async def test_a_subscriber_that_falls_behind_its_backlog_is_ended_with_a_sentence() -> None:
    backlog: Backlog[int] = Backlog(3)
    for n in range(10):
        backlog.offer(n)
    with pytest.raises(Overloaded, match="fell more than 3 changes behind") as ended:
        await backlog.next_batch()
    assert ended.value.code == Status.RESOURCE_EXHAUSTED


def test_a_registry_refuses_watchers_beyond_its_cap_and_frees_a_place_when_one_ends() -> None:
    watchers = Watchers(1)
    with watchers.admit():
        with pytest.raises(Overloaded, match="already serves 1 lease watchers, its limit"):
            with watchers.admit():
                pass
    with watchers.admit():
        assert watchers.count == 1


def test_watch_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="watch limits must be at least 1"):
        WatchLimits(backlog=0)

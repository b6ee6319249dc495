"""How every leasenet process stops (STYLE §5): signals in two stages, and shutdown as a list of
steps that each run to the end, shielded from cancellation and limited in time. No grpc here.

A host's `serve()` starts its long-running tasks in an `asyncio.TaskGroup` and runs its shutdown
steps in `finally`, so they run whether `stop` was set, a task failed, or start-up broke halfway."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True, slots=True)
class Step:
    """One shutdown step: what it does (for the log), the call that does it, and how long it may take."""

    what: str
    run: Callable[[], Awaitable[object]]
    limit_s: float = 5.0


async def _within(step: Step) -> None:
    try:
        async with asyncio.timeout(step.limit_s):
            await step.run()
    except TimeoutError:
        log.warning("shutdown: %s took longer than %.1f s; going on without it", step.what, step.limit_s)
    except Exception as exc:  # the next steps must still run
        log.warning("shutdown: could not %s: %s", step.what, exc)


async def shut_down(steps: Iterable[Step | None]) -> None:
    """Run the steps in order (None: that part never started). Each runs as its own task under
    asyncio.shield, so a cancellation (a second signal) never cuts a step in half: the running step
    goes on within its limit, the steps after it are skipped (lease TTLs are the safety net), and
    the cancellation is raised again at the end."""
    cancelled: asyncio.CancelledError | None = None
    for step in steps:
        if step is None:
            continue
        if cancelled is not None:
            log.warning("shutdown: skipped: %s", step.what)
            continue
        try:
            await asyncio.shield(asyncio.ensure_future(_within(step)))
        except asyncio.CancelledError as exc:
            cancelled = exc
            log.warning("shutdown: cut short while trying to %s", step.what)
    if cancelled is not None:
        raise cancelled


def cancel_all(tasks: Iterable[asyncio.Task[object]]) -> None:
    """End a task group's long-running children, so that the group can end."""
    for task in tasks:
        task.cancel()


async def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` with two-stage signal handling, as grpclib's graceful_exit: the first
    SIGTERM or SIGINT sets `stop` (drain, give back, deregister); a second cancels `main` (stop
    now: the step under way finishes within its limit, the rest is left to the lease TTLs)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None
    signalled_twice = False

    def on_signal() -> None:
        nonlocal signalled_twice
        if not stop.is_set():
            log.info("stopping: draining first (signal again to stop at once)")
            stop.set()
        elif not signalled_twice:
            signalled_twice = True
            log.warning("stopping at once")
            task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        await main(stop)
    except asyncio.CancelledError:
        if not signalled_twice:
            raise
        task.uncancel()  # our own second signal: a stop, not a failure
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)

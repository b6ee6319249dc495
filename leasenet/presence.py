"""`leasenet presence`: a host record kept alive under its liveness lease, and (unless --no-watch) a
replica of exactly what that kind of host watches (mapping/scopes.py), serving nothing. A light
stand-in for a host where only its presence matters: a bench's grants made on behalf of a consumer
host (its pools hang on that host's lease), the scale bench's many watchers (what each one pays per
grant elsewhere), tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mapping.liveness import Liveness
from mapping.model import Host, HostId, HostKind
from mapping.replica import Replica
from mapping.scopes import watch_prefixes
from mapping.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    kind: HostKind
    host_id: HostId
    address: str = "127.0.0.1:0"  # never dialled: the record only needs one
    liveness_ttl_s: int = 3
    watch: bool = True


async def serve(config: PresenceConfig, store: Store, *, stop: asyncio.Event,
                ready: Callable[[str], None] | None = None) -> None:
    host = Host(config.host_id, config.kind, config.address)
    liveness = Liveness(store, config.host_id, lambda: [host], config.liveness_ttl_s)
    replica = Replica(store, prefixes=watch_prefixes(config.kind, config.host_id))
    async with asyncio.TaskGroup() as tasks:
        background = [tasks.create_task(replica.run(), name="replica")] if config.watch else []
        keep_alive: asyncio.Task[None] | None = None
        try:
            if config.watch:
                await replica.synced.wait()
            await liveness.register()
            keep_alive = tasks.create_task(liveness.keep_alive(), name="liveness")
            log.info("%s host %s present%s", config.kind.value, config.host_id,
                     f", watching {', '.join(replica.prefixes)}" if config.watch else "")
            if ready is not None:
                ready(config.address)
            await stop.wait()
        finally:
            await liveness.deregister(keep_alive)
            for task in background:
                task.cancel()

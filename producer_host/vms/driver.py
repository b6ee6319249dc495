"""The one interface a supervisor drives (Nomad's task driver, narrowed): start an incarnation,
learn when it ends, stop it. The endpoint driver is here too: a VM something else runs."""

from __future__ import annotations

import asyncio
from typing import Protocol


class VmDriver(Protocol):
    restartable: bool  # False: the host cannot start or stop it (an endpoint), only check it
    pid: int | None  # the running incarnation's process (its group's id too), if the host runs one

    async def start(self) -> str:
        """Start a new incarnation (a fresh empty work dir); the gRPC target of its server."""
        ...

    async def exited(self) -> int:
        """Return the exit status once the running incarnation has ended (never, for an endpoint)."""
        ...

    async def stop(self) -> None:
        """Stop the running incarnation, if any, and everything it started."""
        ...


class EndpointDriver:
    """A VM at `--vm-endpoint ADDR` that something else runs (a container, a real VM): nothing to
    start or stop, so it is never reset ('none') and a failed one waits to answer again."""

    restartable = False
    pid = None

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def start(self) -> str:
        return self.endpoint

    async def exited(self) -> int:
        await asyncio.Event().wait()  # not ours: it never "exits", it only stops answering
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        return None

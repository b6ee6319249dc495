"""A request's trace stays with the request: tasks that outlive it do not carry its trace id."""

from __future__ import annotations

import asyncio

from consumer_host.tunnel import TunnelClient
from wire.trace import CURRENT, LogContext, bind


class RecordingTunnel(TunnelClient):
    """A tunnel that, instead of dialing, records the request its task believes it serves."""

    seen: LogContext | None | str = "not run"

    async def _run(self) -> None:
        self.seen = CURRENT.get()


async def test_a_tunnel_opened_during_a_request_does_not_carry_that_requests_trace() -> None:
    token = bind("4bf92f3577b34da6a3ce929d0e0e4736", 41)
    try:
        tunnel = RecordingTunnel("127.0.0.1:1", on_broken=lambda address: None).start()
    finally:
        CURRENT.reset(token)
    await tunnel._task  # type: ignore[misc]
    assert tunnel.seen is None


async def test_a_task_started_for_the_request_does_carry_its_trace() -> None:
    async def current() -> LogContext | None:
        return CURRENT.get()

    token = bind("4bf92f3577b34da6a3ce929d0e0e4736", 41)
    try:
        task = asyncio.get_running_loop().create_task(current())
    finally:
        CURRENT.reset(token)
    assert await task == LogContext("4bf92f3577b34da6a3ce929d0e0e4736", 41)

"""Handlers for the fault tests, loaded by producer hosts as `tests.chaos.handlers:<factory>`."""

from __future__ import annotations

import asyncio


def announcing(path: str, seconds: str = "2"):  # noqa: ANN201
    """Appends the payload to `path` when a request starts (so a test sees what is in flight and
    what ran twice); a payload starting with b"slow" then takes `seconds`, anything else is quick."""
    delay = float(seconds)

    async def handle(payload: bytes) -> bytes:
        with open(path, "ab") as f:
            f.write(payload + b"\n")
        if payload.startswith(b"slow"):
            await asyncio.sleep(delay)
        return payload

    return handle

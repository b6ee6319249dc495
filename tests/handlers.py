"""Handlers for tests, loaded by producer hosts as `tests.handlers:<factory>` (module:factory)."""

from __future__ import annotations

import asyncio


def sleepy(seconds: str = "0.5"):  # noqa: ANN201
    """Holds the VM busy for `seconds` (a payload of a number overrides it), then echoes."""
    default = float(seconds)

    async def handle(payload: bytes) -> bytes:
        try:
            delay = float(payload)
        except ValueError:
            delay = default
        await asyncio.sleep(delay)
        return payload

    return handle

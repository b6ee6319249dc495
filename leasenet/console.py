"""What the CLI's commands share below the CLI itself: the one-line error a command raises for
the user, and `run_command`, which turns any error a command ends with into `leasenet: <message>`
on stderr and exit status 1 (never a traceback)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import grpc.aio

from wire.errors import LeasenetError


class CliError(Exception):
    """A one-line message for the user."""


def run_command(command: Callable[[], None]) -> int:
    """Run `command` (parse, set up, act); 0, or 1 after printing its error in one line (130 when
    interrupted)."""
    try:
        command()
        return 0
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        message = first.message if isinstance(first, LeasenetError) else _one_line(first)
    except (CliError, LeasenetError, grpc.aio.AioRpcError, ValueError, OSError, TimeoutError) as exc:
        message = _one_line(exc)
    print(f"leasenet: {message}", file=sys.stderr)
    return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, LeasenetError):
        return f"{exc.code.name}: {exc.message}"
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)

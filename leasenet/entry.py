"""The `leasenet` program's entry: picks the subcommand's module before importing anything else.
Most subcommands run in the full CLI (leasenet.cli: every parser, the services, the bench); the
few that run often and must stay cheap have a small module of their own, found in LIGHT."""

from __future__ import annotations

import importlib
import sys

# subcommand -> module whose main(argv) runs it without importing leasenet.cli
LIGHT = {"health": "leasenet.health"}
FULL = "leasenet.cli"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    module = LIGHT.get(args[0], FULL) if args else FULL
    return int(importlib.import_module(module).main(args))

"""`leasenet health ADDRESS`: exit 0 when the gRPC server there reports SERVING. A container's
healthcheck runs it every few seconds, so it is reached without the rest of the CLI (leasenet.entry)
and imports only the probe: wire.channels, the TLS flags and credentials, no servers, metrics,
tracing or bench."""

from __future__ import annotations

import argparse
import asyncio

from leasenet import security
from leasenet.console import CliError, run_command
from leasenet.flags import add, tls_flags
from wire import channels, logs

HELP = "exit 0 when the gRPC server at ADDRESS reports SERVING (and print the version it announces)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="host:port")
    add(p, "--timeout", default=2.0, type=float, help="seconds")
    tls_flags(p, operator=True)


def cmd_health(args: argparse.Namespace) -> None:
    """With TLS, accept any leasenet server; a probe of a host's own kind tries that kind's name first."""
    me = security.operator(args)
    kinds = sorted(channels.SERVER_KINDS, key=lambda kind: kind is not me.identity.kind)
    health = asyncio.run(channels.probe_health(args.address, args.timeout, me.tls, kinds))
    if not health.serving:
        raise CliError(f"{args.address} is not serving")
    print(f"{args.address} SERVING" + (f" (leasenet {health.version})" if health.version else ""))


def main(argv: list[str]) -> int:
    """`leasenet health ...` alone: `argv` starts with "health"; the parser is the full CLI's with
    only this subcommand, so usage, help and errors read the same."""
    def command() -> None:
        parser = argparse.ArgumentParser(prog="leasenet")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        add_arguments(sub.add_parser("health", help=HELP))
        args = parser.parse_args(argv)
        logs.setup("WARNING", "text", kind="health", host="")
        cmd_health(args)
    return run_command(command)

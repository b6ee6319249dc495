"""`leasenet health`, which every container's healthcheck runs every few seconds, is reached without
the rest of the CLI: it imports neither OpenTelemetry, nor the bench, nor the servers and metrics,
and still answers in one line; the full CLI lists and parses it as before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from leasenet import entry
from leasenet.cli import build_parser

HEAVY = ("opentelemetry", "prometheus_client", "leasenet.cli", "leasenet.bench", "wire.rpc", "wire.metrics",
         "registry", "consumer_host", "producer_host")


def free_port() -> int:
    """A port nothing listens on: bound by the kernel's choice, then let go."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `leasenet ARGS` as the program does (leasenet.entry.main) and list every module it imported
    (printed to stdout after the command's own output)."""
    script = ("import sys\nfrom leasenet.entry import main\ncode = main(sys.argv[1:])\n"
              "print('MODULES', *sorted(sys.modules))\nsys.exit(code)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASENET_")}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, env=env)
    listed = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("MODULES ")]
    assert len(listed) == 1, out.stdout + out.stderr
    return out, set(listed[0])


def test_leasenet_health_imports_only_the_probe_and_reports_an_unreachable_server_in_one_line() -> None:
    out, modules = imported_by("health", f"127.0.0.1:{free_port()}", "--insecure", "--timeout", "0.5")
    heavy = sorted(m for m in modules if m.startswith(HEAVY))
    assert "wire.channels" in modules and heavy == []
    errors = [line for line in out.stderr.splitlines() if not line.startswith(("WARNING:", "E0000", "I0000"))]
    assert out.returncode == 1 and len(errors) == 1 and errors[0].startswith("leasenet: UNAVAILABLE"), out.stderr


def test_every_other_subcommand_goes_to_the_full_cli() -> None:
    out, modules = imported_by("leases", "--registry", f"127.0.0.1:{free_port()}", "--insecure")
    assert out.returncode == 1 and "leasenet.cli" in modules and "UNAVAILABLE" in out.stderr


def test_the_entry_sends_only_health_to_its_own_module() -> None:
    assert entry.LIGHT == {"health": "leasenet.health"}
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(entry.LIGHT) <= set(commands)  # the full CLI lists (and runs) it too
    assert commands["health"].parse_args(["10.0.0.1:7000", "--insecure"]).timeout == 2.0

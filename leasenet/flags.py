"""The flags every `leasenet` command builds its parser from: each reads LEASENET_<FLAG> as its
default, and the TLS flags of a process or an operator command. Light (argparse, no grpc servers),
so that `leasenet health` can build its parser without the rest of the CLI."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from leasenet import security
from leasenet.console import CliError


def env_name(flag: str) -> str:
    return "LEASENET_" + flag.lstrip("-").upper().replace("-", "_")


def add(parser: argparse.ArgumentParser, flag: str, *, required: bool = False, default: Any = None,
        type: Callable[[str], Any] = str, help: str = "", **kwargs: Any) -> None:  # noqa: A002
    """A flag whose default comes from its environment variable (help=argparse.SUPPRESS: hidden)."""
    env = env_name(flag)
    help = help if help == argparse.SUPPRESS else f"{help} [env {env}]"  # noqa: A001
    if kwargs.get("action") in ("store_true",):
        default = os.environ.get(env, "").lower() in ("1", "true", "yes") or bool(default)
        parser.add_argument(flag, default=default, help=help, **kwargs)
        return
    if kwargs.get("action") == "append":
        value = os.environ.get(env)
        default = [v for v in value.split(",") if v] if value else (default or [])
        parser.add_argument(flag, default=default, help=help, **kwargs)
        return
    if env in os.environ:
        try:
            default = type(os.environ[env])
        except ValueError as exc:
            raise CliError(f"{env}={os.environ[env]!r} is not valid: {exc}") from None
        required = False
    parser.add_argument(flag, default=default, required=required, type=type, help=help, **kwargs)


def tls_flags(p: argparse.ArgumentParser, *, operator: bool = False) -> None:
    """Mutual TLS (the default, required) or --insecure; an operator command also says who it is."""
    add(p, "--tls-dir", default="", help="directory of ca.crt and this process's <kind>-<id>.crt/.key "
        "(made by `leasenet certs`)")
    add(p, "--tls-cert", default="", help="this process's certificate (instead of the one in --tls-dir)")
    add(p, "--tls-key", default="", help="its private key")
    add(p, "--tls-ca", default="", help="the cluster CA certificate")
    add(p, "--insecure", action="store_true", help="plaintext, no certificates: for local experiments only")
    if operator:
        add(p, "--identity", default=security.OPERATOR, help="KIND/ID whose certificate to present "
            "(a container's healthcheck gives its own, e.g. producer/producer1)")

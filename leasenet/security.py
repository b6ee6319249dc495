"""Who a leasenet command is and how it proves it: the identity (its own kind and id, or an operator's
`--identity KIND/ID`) and the TLS material from `--tls-dir` or `--tls-cert/--tls-key/--tls-ca`, or
plaintext with `--insecure`. Given neither, the command stops with one line naming --insecure."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import grpc.aio

from leasenet.console import CliError
from wire import channels
from wire.tls import Identity, Kind, TlsConfigError, TlsMaterial, resolve_files

OPERATOR = "operator/admin"  # --identity's default


@dataclass(frozen=True, slots=True)
class Credentials:
    identity: Identity
    tls: TlsMaterial | None = field(default=None, repr=False)  # None: plaintext (--insecure)

    def channel(self, address: str, expect: Kind) -> grpc.aio.Channel:
        """A channel to a server of kind `expect`, presenting our certificate (inside a running loop)."""
        return channels.channel(address, self.tls, expect)


def parse_identity(text: str) -> Identity:
    kind, _, ident = text.partition("/")
    kinds = [k.value for k in Kind if k is not Kind.ETCD]
    if kind not in kinds:
        raise CliError(f"--identity {text!r} is not KIND/ID with KIND one of {', '.join(kinds)} (e.g. {OPERATOR})")
    try:
        return Identity(Kind(kind), ident)
    except ValueError as exc:
        raise CliError(f"--identity: {exc}") from None


def credentials(args: argparse.Namespace, identity: Identity) -> Credentials:
    """`identity`'s credentials from the command's TLS flags, loaded once at start."""
    try:
        files = resolve_files(identity, tls_dir=args.tls_dir or None, cert=args.tls_cert or None,
                              key=args.tls_key or None, ca=args.tls_ca or None, insecure=args.insecure)
        return Credentials(identity, files.load() if files is not None else None)
    except TlsConfigError as exc:
        raise CliError(str(exc)) from None


def operator(args: argparse.Namespace) -> Credentials:
    """An operator command's credentials (`send`, `traffic`, `leases|hosts|vms|services`, `health`)."""
    return credentials(args, parse_identity(args.identity))

"""The consumer host's configuration file: the consumer VMs attached to it, each with its token's
salted hash (`leasenet token hash` makes one; consumer_host/tokens.py says why and how).

    [[vms]]
    network = "blue"
    address = "10.1.0.1"
    token_hash = "scrypt$n=16384,r=8,p=1$<salt>$<digest>"

A plaintext `token = "..."` is still read (with a warning at start: see `plaintext`), so configs
written before hashing keep working until they migrate. An entry with both, neither, a bad network
name or address, or a consumer VM listed twice is refused at start with one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consumer_host.datapath import Attachment
from consumer_host.tokens import PlainToken, Secret, parse_token_hash
from mapping.config import read_toml
from mapping.model import VmId, parse_ipv4
from mapping.names import check_name


@dataclass(frozen=True, slots=True)
class Limits:
    """The consumer host's bounds (SPEC §10: every queue bounded, RESOURCE_EXHAUSTED past it)."""

    stream_requests: int = 1024  # requests in flight on one SendStream
    vm_requests: int = 1024  # requests in flight per consumer VM, Send and SendStream together
    pool_waiters: int = 512  # requests waiting for a VM of one pool
    bad_tokens: int = 5  # wrong tokens from one source within a minute before it is refused
    bad_token_block_s: float = 30.0  # how long such a source is refused
    token_checks: int = 64  # token checks (scrypt) waiting at once

    def __post_init__(self) -> None:
        for name in ("stream_requests", "vm_requests", "pool_waiters", "bad_tokens", "token_checks"):
            if getattr(self, name) < 1:
                raise ValueError(f"--max-{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.bad_token_block_s <= 0:
            raise ValueError(f"--bad-token-block must be above 0 seconds, got {self.bad_token_block_s:g}")


def load_attachments(path: str | Path) -> dict[VmId, Attachment]:
    data = read_toml(path, "consumer host config")
    vms = data.get("vms", [])
    if not isinstance(vms, list):
        raise ValueError(f"{path}: vms must be a list of [[vms]] tables")
    attachments: dict[VmId, Attachment] = {}
    for i, vm in enumerate(vms):
        where = f"{path}: vms[{i}]"
        if not isinstance(vm, dict):
            raise ValueError(f"{where} is not a table")
        try:
            network = check_name("network", str(vm["network"]))
            address = parse_ipv4(str(vm["address"]), "consumer VM address")
        except KeyError as exc:
            raise ValueError(f"{where} is missing {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        a = Attachment(network, address, _secret(vm, f"{where} (consumer VM {network}/{address})"))
        if a.vm_id in attachments:
            raise ValueError(f"{where}: consumer VM {a.vm_id} is listed twice; each consumer VM is attached once")
        attachments[a.vm_id] = a
    return attachments


def _secret(vm: dict[str, object], where: str) -> Secret:
    hashed, plain = vm.get("token_hash"), vm.get("token")
    if hashed is not None and plain is not None:
        raise ValueError(f"{where} has both token and token_hash; keep only token_hash")
    if hashed is not None:
        try:
            return parse_token_hash(str(hashed))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if plain is None:
        raise ValueError(f"{where} has no token_hash (make one with `leasenet token hash`)")
    if not str(plain):
        raise ValueError(f"{where} has an empty token")
    return PlainToken(str(plain))


def plaintext(attachments: dict[VmId, Attachment]) -> list[VmId]:
    """The consumer VMs whose token the config holds in plain text (the host warns at start)."""
    return sorted(vm for vm, a in attachments.items() if isinstance(a.secret, PlainToken))

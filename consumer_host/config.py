"""The consumer host's configuration file: the consumer VMs attached to it, each with its token's
salted hash (`leasenet token hash` makes one; consumer_host/tokens.py says why and how).

    [[vms]]
    network = "blue"
    address = "10.1.0.1"
    token_hash = "scrypt$n=16384,r=8,p=1$<salt>$<digest>"

A VM may also reach services through VIP endpoints (consumer_host/vip.py): local gRPC endpoints
that stand for a target VIP, one `[[vms.vip]]` table each inside its `[[vms]]` table:

    [[vms.vip]]
    target = "10.1.255.1:7"
    listen = "unix:///run/leasenet/vm1-echo.sock"   # or "127.0.0.1:17001" (local experiments only)
    mode = "0600"                                    # the unix socket's file mode (default 0600)

A plaintext `token = "..."` is still read (with a warning at start: see `plaintext`), so configs
written before hashing keep working until they migrate. An entry with both, neither, a bad network
name or address, or a consumer VM listed twice is refused at start with one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import ipaddress

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


@dataclass(frozen=True, slots=True)
class VipEndpoint:
    """A local gRPC endpoint standing for `target` (vip:port) to consumer VM `vm`: whoever connects
    to it is that VM (the socket's owner and mode guard it; a loopback port guards nothing)."""

    vm: VmId
    target: str
    listen: str  # unix:///abs/path.sock or 127.0.0.1:PORT
    mode: int = 0o600  # unix sockets only

    @property
    def socket_path(self) -> str | None:
        return self.listen.removeprefix("unix://") if self.listen.startswith("unix://") else None


def load_attachments(path: str | Path) -> dict[VmId, Attachment]:
    return load_config(path)[0]


def load_config(path: str | Path) -> tuple[dict[VmId, Attachment], list[VipEndpoint]]:
    """The attached consumer VMs and their VIP endpoints; ValueError (one line naming the entry)."""
    data = read_toml(path, "consumer host config")
    vms = data.get("vms", [])
    if not isinstance(vms, list):
        raise ValueError(f"{path}: vms must be a list of [[vms]] tables")
    attachments: dict[VmId, Attachment] = {}
    endpoints: list[VipEndpoint] = []
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
        vips = vm.get("vip", [])
        if not isinstance(vips, list):
            raise ValueError(f"{where}: vip must be a list of [[vms.vip]] tables")
        for j, vip in enumerate(vips):
            endpoints.append(_vip(a.vm_id, vip, f"{where}.vip[{j}]"))
    seen: set[str] = set()
    for e in endpoints:
        if e.listen in seen:
            raise ValueError(f"{path}: VIP endpoint {e.listen} is listed twice; each endpoint stands for one "
                             "consumer VM and target")
        seen.add(e.listen)
    return attachments, endpoints


def _vip(vm: VmId, entry: object, where: str) -> VipEndpoint:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a table")
    try:
        target, listen = str(entry["target"]), str(entry["listen"])
    except KeyError as exc:
        raise ValueError(f"{where} (consumer VM {vm}) is missing {exc.args[0]!r}") from None
    host, sep, port = target.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
        valid = bool(sep) and port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{where} (consumer VM {vm}): target {target!r} is not an address:port like 10.1.255.1:7")
    if listen.startswith("unix://"):
        if not listen.removeprefix("unix://").startswith("/"):
            raise ValueError(f"{where} (consumer VM {vm}): listen {listen!r} needs an absolute path "
                             "(unix:///run/leasenet/vm1.sock)")
    else:
        lhost, lsep, lport = listen.rpartition(":")
        if not lsep or not lport.isdigit() or lhost not in ("127.0.0.1", "localhost", "[::1]"):
            raise ValueError(f"{where} (consumer VM {vm}): listen {listen!r} is neither unix:///path nor a loopback "
                             "127.0.0.1:PORT")
    try:
        mode = int(str(entry.get("mode", "0600")), 8)
    except ValueError:
        raise ValueError(f"{where} (consumer VM {vm}): mode {entry.get('mode')!r} is not an octal file mode like "
                         "\"0600\"") from None
    return VipEndpoint(vm, target, listen, mode)


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

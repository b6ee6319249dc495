"""Audit lines of the leasing API: one per grant, grow, shrink and release, and per failed
renewal (a renewal that works is routine and says nothing new), each saying who called (from the
peer certificate), what, and which pool. A refused or failed call is audited too, with its status.

They go to the `leasenet.audit` logger at INFO; with --log-format json their fields are keys of
the line: audit (the action), caller, pool (service/network/consumer address), lease_id, vms,
outcome ("OK" or the status name) and, when it failed, reason."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields

from mapping.model import Pool, lease_hex
from registry.authz import Anyone, Caller
from wire.errors import LeasenetError

log = logging.getLogger("leasenet.audit")


@dataclass(frozen=True, slots=True)
class AuditLine:
    audit: str  # grant, grow, shrink, release, renew
    caller: str
    pool: str
    lease_id: str
    vms: tuple[str, ...] = ()
    outcome: str = "OK"
    reason: str = ""

    def message(self) -> str:
        vms = f" vms {', '.join(self.vms)}" if self.vms else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.audit} by {self.caller} of pool {self.pool or '?'} lease {self.lease_id or '?'}{vms}: " \
               f"{self.outcome}{why}"


def who(caller: Caller) -> str:
    """The caller as the certificate names it (consumer/c1)."""
    if caller is None:
        return "a certificate naming no leasenet identity"
    return "anyone (--insecure)" if isinstance(caller, Anyone) else str(caller)


def pool_name(pool: Pool | None) -> str:
    return f"{pool.service}/{pool.consumer_vm}" if pool is not None else ""


def line(action: str, caller: Caller, pool: str, lease_id: int | None, vms: Iterable[str] = (),
         error: LeasenetError | None = None) -> AuditLine:
    return AuditLine(action, who(caller), pool, lease_hex(lease_id) if lease_id else "", tuple(vms),
                     error.code.name if error else "OK", error.message if error else "")


def record(entry: AuditLine) -> None:
    if log.isEnabledFor(logging.INFO):  # its fields as they are (asdict would deep-copy them), once per call
        log.info(entry.message(), extra={f: getattr(entry, f) for f in _FIELDS})


_FIELDS = tuple(f.name for f in fields(AuditLine))

"""Audit lines of the leasing API (registry/audit.py): who, what, which pool, and how it ended."""

from __future__ import annotations

from mapping.model import HostId, LeaseId, Pool, VmId
from registry import audit
from registry.authz import ANYONE
from wire.errors import NotFound
from wire.tls import Identity, Kind

POOL = Pool("echo", VmId("blue/10.1.0.9"), HostId("c7"), LeaseId(0x19d0), 5)


def test_a_grant_names_the_certificates_identity_the_pool_and_its_vms() -> None:
    line = audit.line("grant", Identity(Kind.CONSUMER, "c7"), audit.pool_name(POOL), POOL.lease_id, ["blue/10.1.1.1"])
    assert line == audit.AuditLine("grant", "consumer/c7", "echo/blue/10.1.0.9", "19d0", ("blue/10.1.1.1",))
    assert line.message() == "grant by consumer/c7 of pool echo/blue/10.1.0.9 lease 19d0 vms blue/10.1.1.1: OK"


def test_a_failure_carries_its_status_and_sentence() -> None:
    line = audit.line("renew", Identity(Kind.CONSUMER, "c7"), "", LeaseId(0xabc), error=NotFound("no such lease"))
    assert (line.outcome, line.reason) == ("NOT_FOUND", "no such lease")
    assert line.message() == "renew by consumer/c7 of pool ? lease abc: NOT_FOUND: no such lease"


def test_callers_without_a_certificate_identity_are_named_as_such() -> None:
    assert audit.who(ANYONE) == "anyone (--insecure)"
    assert audit.who(None) == "a certificate naming no leasenet identity"

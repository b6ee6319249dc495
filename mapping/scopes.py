"""What each kind of process watches (issue 19): only the prefixes that concern it, so that a grant
costs CPU in the processes party to it (the consumer host that asked, the producer host whose VM was
claimed, the registries) and in no other host. The shared prefixes (cluster config and host records)
change when a host comes, goes or drains, never per grant.

    registry             all of ROOT: it chooses among every VM and serves inspection (leases, vms, hosts)
    producer host p      networks/ services/ hosts/ vms/<p>/ claims/<p>/
    consumer host c      networks/ services/ hosts/ pools/<c>/   (its pools and their members)

Within what it watches, a registry skips the pools' members (`skipped`): they mirror the claims for the
consumer hosts, and a registry reads the claims themselves; a third of every grant's events is
theirs, and both registries would decode and apply each.
"""

from __future__ import annotations

from collections.abc import Callable

from mapping import keys
from mapping.model import HostKind

SHARED = keys.SHARED_PREFIXES


def watch_prefixes(kind: HostKind, host_id: str) -> tuple[str, ...]:
    """The key prefixes a process of `kind` with id `host_id` keeps in its replica."""
    match kind:
        case HostKind.PRODUCER:
            return (*SHARED, f"{keys.VMS}{host_id}/", f"{keys.CLAIMS}{host_id}/")
        case HostKind.CONSUMER:
            return (*SHARED, f"{keys.POOLS}{host_id}/")
    return (keys.ROOT,)


def skipped(kind: HostKind) -> Callable[[str], bool] | None:
    """Keys a process of `kind` neither decodes nor keeps although it watches them (None: none)."""
    return keys.is_member_key if kind is HostKind.REGISTRY else None

"""What the registry accepts in a leasing request (pure: plain values in, InvalidRequest out).

Every name a request carries becomes an etcd key segment or value, so each is checked with the
one name rule (mapping.names) and every address parsed before anything is written: a request
that fails here has changed nothing."""

from __future__ import annotations

from collections.abc import Sequence

from mapping.model import parse_ipv4
from mapping.names import check_name
from wire.errors import InvalidRequest

MAX_LIST = 64  # avoid_hosts and vm_ids: a consumer host never needs more in one call
MAX_ADDRESS_LEN = 253 + 6  # a DNS name and ":port"


def _checked(check, *args: str) -> str:  # noqa: ANN001 - check_name or parse_ipv4
    try:
        return check(*args)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def name(what: str, value: str) -> str:
    return _checked(check_name, what, value)


def address(what: str, value: str) -> str:
    if len(value) > 15:  # longer than any IPv4 address: do not echo it whole
        raise InvalidRequest(f"{what} is {len(value)} characters long; an IPv4 address has at most 15")
    return _checked(parse_ipv4, value, what)


def host_addresses(values: Sequence[str]) -> frozenset[str]:
    """avoid_hosts: producer host addresses (host:port) as the registry hands them out."""
    if len(values) > MAX_LIST:
        raise InvalidRequest(f"avoid_hosts lists {len(values)} hosts; the limit is {MAX_LIST}")
    for value in values:
        if not value or len(value) > MAX_ADDRESS_LEN or not value.isprintable() or " " in value:
            raise InvalidRequest(f"avoid_hosts holds {value[:40]!r}, which is not a host:port address")
    return frozenset(values)


def vm_ids(values: Sequence[str]) -> list[str]:
    """ShrinkLease's producer VM ids, each <network>/<address>."""
    if len(values) > MAX_LIST:
        raise InvalidRequest(f"vm_ids lists {len(values)} VMs; the limit is {MAX_LIST}")
    checked = []
    for value in values:
        network, sep, vm = value.partition("/")
        if not sep:
            raise InvalidRequest(f"producer VM id {value[:80]!r} is not <network>/<address>")
        checked.append(f"{name('producer VM network', network)}/{address('producer VM address', vm)}")
    return checked

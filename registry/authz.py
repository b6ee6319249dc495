"""Who may call what on a registry (SPEC §10), as pure rules over the caller's identity.

The caller is named by its certificate (`wire.tls.peer_identity`), never by a request field. A
registry started with `--insecure` has no certificates to read: its callers are ANYONE, and fields
they state are believed (today's behaviour for local experiments). With TLS on, a connection whose
certificate names no leasenet identity is None, and every rule refuses it: fail closed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from mapping.model import HostId, Pool, lease_hex
from mapping.names import check_name
from wire.errors import PermissionDenied
from wire.verdict import PeerKind, Refusal

if TYPE_CHECKING:  # wire.tls imports grpc; these rules stay pure and compare kinds by value (a str enum)
    from wire.tls import Identity

CONSUMER, OPERATOR, REGISTRY = "consumer", "operator", "registry"


@dataclass(frozen=True, slots=True)
class Anyone:
    """A plaintext registry's caller (--insecure): whoever it says it is."""

    def __str__(self) -> str:
        return "an unauthenticated caller (--insecure)"


ANYONE = Anyone()


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A consumer host whose call another registry forwarded to the service's owner: the forwarding
    registry read `id` from the consumer host's certificate; we believe it only because the peer's
    own certificate is a registry's (`on_behalf`)."""

    id: str
    via: str  # the forwarding registry's id
    kind: str = CONSUMER

    def __str__(self) -> str:
        return f"consumer/{self.id} (forwarded by registry/{self.via})"


Caller: TypeAlias = "Identity | Anyone | Forwarded | None"


CONSUMER_HOST = PeerKind(CONSUMER, "the leasing API serves consumer hosts only", peer="the caller",
                         certificate="the caller's certificate")


def lessee(caller: Caller, stated: str) -> HostId | Refusal:
    """The consumer host a RequestLease is for: the caller's own; a request naming another is refused."""
    if isinstance(caller, Anyone):
        return HostId(stated)
    host = CONSUMER_HOST.check(caller)
    if isinstance(host, Refusal):
        return host
    if stated and stated != host.id:
        return Refusal(PermissionDenied, f"{host} cannot lease for consumer host {stated!r}: a consumer host "
                                         "leases for itself only")
    return HostId(host.id)


def may_act_on_pool(caller: Caller, pool: Pool, action: str) -> Refusal | None:
    """Grow, shrink, renew or release (`action`) only the caller's own pools."""
    if isinstance(caller, Anyone):
        return None
    host = CONSUMER_HOST.check(caller)
    if isinstance(host, Refusal):
        return host
    if pool.consumer_host != host.id:
        return Refusal(PermissionDenied, f"lease {lease_hex(pool.lease_id)} is a pool of another consumer host; "
                                         f"{host} may {action} only its own")
    return None


def on_behalf(peer: Caller, stated: str | None) -> Caller | Refusal:
    """Whom a leasing call is for. `stated`: the consumer host a forwarding registry says it carries
    the call for (None: not forwarded, the peer itself). Only a registry's certificate may state one:
    a consumer host claiming to forward is refused, so no client can borrow another's identity."""
    if stated is None or isinstance(peer, Anyone):
        return peer  # --insecure: every stated field is believed anyway
    if peer is None or peer.kind != REGISTRY:
        return Refusal(PermissionDenied, f"only a registry may forward a leasing call on behalf of a consumer host; "
                                         f"the caller is {peer or 'a certificate naming no leasenet identity'}")
    try:
        return Forwarded(check_name("forwarded consumer host id", stated), via=peer.id)
    except ValueError as exc:
        return Refusal(PermissionDenied, str(exc))


def may_inspect(caller: Caller) -> Refusal | None:
    """Inspection is read-only: any process with a certificate from the cluster CA may read it."""
    if caller is None:
        return Refusal(PermissionDenied, "inspection needs a certificate naming a leasenet identity")
    return None


def sees_fencing_tokens(caller: Caller) -> bool:
    """A fencing token is half of what a forged tunnel frame needs; only operators and registries
    (the checker, `leasenet leases`) are shown them. Consumer hosts get their own in leasing answers."""
    return isinstance(caller, Anyone) or (caller is not None and caller.kind in (OPERATOR, REGISTRY))

"""wire.verdict: the one refusal every pure rule answers with (admission, frame validation, the
registry's authorisation, failover), raised at the edge as its own error type and sentence; and the
one check that a peer's certificate names the kind of process a call is for."""

from __future__ import annotations

from wire.errors import PermissionDenied, QuotaExceeded, Status
from wire.tls import Identity, Kind
from wire.verdict import PeerKind, Refusal


def test_a_refusal_has_the_status_of_its_error_type() -> None:
    assert Refusal(PermissionDenied, "no").code is Status.PERMISSION_DENIED
    assert Refusal(QuotaExceeded, "full").code is Status.RESOURCE_EXHAUSTED


def test_a_refusal_raised_is_its_own_error_type_with_its_sentence() -> None:
    error = Refusal(QuotaExceeded, "consumer host 'c1' already holds 2 lease(s)").exception()
    assert type(error) is QuotaExceeded
    assert error.message == "consumer host 'c1' already holds 2 lease(s)" and error.code is Status.RESOURCE_EXHAUSTED


TUNNEL = PeerKind("consumer", "only consumer hosts send tunnel frames", peer="this stream's peer",
                  certificate="the tunnel's peer certificate")


def test_a_peer_of_the_kind_is_itself() -> None:
    c1 = Identity(Kind.CONSUMER, "c1")
    assert TUNNEL.check(c1) is c1


def test_a_peer_of_another_kind_is_refused_in_the_words_of_the_api() -> None:
    assert TUNNEL.check(Identity(Kind.PRODUCER, "p1")) == Refusal(
        PermissionDenied, "only consumer hosts send tunnel frames; this stream's peer is producer/p1")


def test_a_certificate_naming_no_identity_is_refused() -> None:
    assert TUNNEL.check(None) == Refusal(PermissionDenied, "the tunnel's peer certificate names no leasenet identity")

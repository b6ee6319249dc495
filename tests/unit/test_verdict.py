"""wire.verdict: the one refusal every pure rule answers with (admission, frame validation, the
registry's authorisation, failover), raised at the edge as its own error type and sentence."""

from __future__ import annotations

from wire.errors import PermissionDenied, QuotaExceeded, Status
from wire.verdict import Refusal


def test_a_refusal_has_the_status_of_its_error_type() -> None:
    assert Refusal(PermissionDenied, "no").code is Status.PERMISSION_DENIED
    assert Refusal(QuotaExceeded, "full").code is Status.RESOURCE_EXHAUSTED


def test_a_refusal_raised_is_its_own_error_type_with_its_sentence() -> None:
    error = Refusal(QuotaExceeded, "consumer host 'c1' already holds 2 lease(s)").exception()
    assert type(error) is QuotaExceeded
    assert error.message == "consumer host 'c1' already holds 2 lease(s)" and error.code is Status.RESOURCE_EXHAUSTED

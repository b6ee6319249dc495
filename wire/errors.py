"""The error vocabulary. Each failure has its own type; each type carries the status it maps to at
the service edge and a sentence for the user. `Status` names a status without grpc, so pure modules
can use it; `wire.rpc` alone converts to and from `grpc.StatusCode`.

Across the wire a server sends the status, the sentence and the error's type name (trailing
metadata `leasenet-error`); `error_for_status` rebuilds exactly that type, or, when the name is
missing (a foreign server, a transport failure, a tunnel frame), the most general type for the
status. Anything that is not a LeasenetError becomes INTERNAL at the edge with a generic sentence."""

from __future__ import annotations

import enum
from typing import ClassVar

ERROR_METADATA_KEY = "leasenet-error"  # trailing metadata: the error's type name


class Status(enum.IntEnum):
    """The gRPC status codes, with gRPC's numbers (a tunnel frame carries the number)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, number: int) -> Status:
        """The status a number on the wire names; UNKNOWN for a number no status has."""
        try:
            return cls(number)
        except ValueError:
            return cls.UNKNOWN


class LeasenetError(Exception):
    """The base, and the type of an error we know only by an unusual status. `detail` says what
    went wrong underneath (an exception's text): it goes to the log, never over the wire."""

    code: Status = Status.INTERNAL
    # why a RESOURCE_EXHAUSTED answer was given: the bounded `reason` label of
    # leasenet_resource_exhausted_total (wire/metrics.py), counted where the error becomes a status
    reason: str = ""
    by_name: ClassVar[dict[str, type[LeasenetError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        LeasenetError.by_name[cls.__name__] = cls

    def __init__(self, message: str, *, detail: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if reason:
            self.reason = reason


LeasenetError.by_name[LeasenetError.__name__] = LeasenetError


class NotFound(LeasenetError):
    code = Status.NOT_FOUND


class InvalidRequest(LeasenetError):
    code = Status.INVALID_ARGUMENT


class PermissionDenied(LeasenetError):
    code = Status.PERMISSION_DENIED


class Unauthenticated(LeasenetError):
    code = Status.UNAUTHENTICATED


class ClaimConflict(LeasenetError):
    code = Status.ABORTED


class PoolExhausted(LeasenetError):
    code = Status.RESOURCE_EXHAUSTED
    reason = "pool_exhausted"  # e.g. rebuilt from another process's answer, which counted its own reason


class QuotaExceeded(PoolExhausted):
    """A lease would exceed a quota (network, consumer host or consumer VM): a pool's exhaustion
    as far as the consumer host is concerned, with a sentence naming the quota."""

    reason = "quota"


class Overloaded(LeasenetError):
    """A bounded queue, a cap on subscribers or a rate limit is full: what does not fit is refused, not
    buffered (which one: the sentence)."""

    code = Status.RESOURCE_EXHAUSTED
    reason = "overloaded"  # each raise names its bound instead (reason=...)


class DeadlineExceeded(LeasenetError):
    code = Status.DEADLINE_EXCEEDED


class PreconditionFailed(LeasenetError):
    """Something the call relied on no longer holds (which thing: the subclasses)."""

    code = Status.FAILED_PRECONDITION


class LeaseExpired(PreconditionFailed):
    """The pool's lease expired or was released: lease anew."""


class StaleClaim(PreconditionFailed):
    """A frame's fencing token is not the VM's current claim: the frame is refused, not run."""


class VersionMismatch(PreconditionFailed):
    """A peer speaks no version of a protocol in common with us, or etcd holds a key schema we do
    not read (wire/version.py): refused before anything is read or written."""


class Unavailable(LeasenetError):
    """Someone we depend on did not answer (who: the subclasses)."""

    code = Status.UNAVAILABLE


class StoreUnavailable(Unavailable):
    """etcd, or every leasing agent, did not answer."""


class ProducerUnavailable(Unavailable):
    """No producer VM ran the request (its host broke, or the VM stopped)."""


# what a status alone rebuilds: the most general type that has it
_BY_STATUS: dict[Status, type[LeasenetError]] = {
    cls.code: cls for cls in (NotFound, InvalidRequest, PermissionDenied, Unauthenticated, ClaimConflict,
                              PoolExhausted, DeadlineExceeded, PreconditionFailed, Unavailable, LeasenetError)}


def error_for_status(code: Status, message: str, name: str | None = None) -> LeasenetError:
    """Rebuild a typed error from a status that crossed the wire: the type `name` says when it is
    one of ours with that very status, else the most general type for the status."""
    cls = LeasenetError.by_name.get(name or "")
    if cls is None or cls.code != code:
        cls = _BY_STATUS.get(code)
    if cls is None:  # a status none of ours has (e.g. UNIMPLEMENTED from a foreign server)
        err = LeasenetError(message)
        err.code = code
        return err
    return cls(message)

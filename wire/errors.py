"""The error taxonomy. Each error carries the gRPC status it maps to at the service edge and a
sentence for the user; anything that is not a LeasenetError becomes INTERNAL there."""

from __future__ import annotations

import grpc


class LeasenetError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(LeasenetError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidRequest(LeasenetError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(LeasenetError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(LeasenetError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ClaimConflict(LeasenetError):
    code = grpc.StatusCode.ABORTED


class PoolExhausted(LeasenetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class LeaseExpired(LeasenetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class StaleClaim(LeasenetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class StoreUnavailable(LeasenetError):
    code = grpc.StatusCode.UNAVAILABLE


class ProducerUnavailable(LeasenetError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(LeasenetError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def error_for_status(code: grpc.StatusCode, message: str) -> LeasenetError:
    """Rebuild a typed error from a status that crossed the wire (tunnel frames, registry calls)."""
    for cls in (NotFound, InvalidRequest, PermissionDenied, Unauthenticated, ClaimConflict, PoolExhausted,
                LeaseExpired, StoreUnavailable, DeadlineExceeded):
        if cls.code == code:
            err: LeasenetError = cls(message)
            return err
    err = LeasenetError(message)
    err.code = code
    return err

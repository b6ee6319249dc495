"""The one "no" a pure rule answers with: the error type (which carries the status, wire/errors.py)
and the sentence for the caller. Admission on the consumer host, frame validation on the producer
host, the registry's authorisation rules and the failover verdict all return it; the I/O edge that
asked raises `exception()`. Pure: no grpc, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from wire.errors import LeasenetError, Status


@dataclass(frozen=True, slots=True)
class Refusal:
    error: type[LeasenetError]
    message: str

    @property
    def code(self) -> Status:
        return self.error.code

    def exception(self) -> LeasenetError:
        return self.error(self.message)

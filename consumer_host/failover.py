"""The failover verdict (SPEC §6), the one place it lives: given what happened to one attempt of a
request and whether the request is idempotent, retry it on another VM or fail it with a sentence.
Pure: no I/O, no grpc; the request path asks, then does it.

    what happened       idempotent      not idempotent
    NOT_DELIVERED       retry           retry              the frame never left this host
    REFUSED             retry           retry              the producer host refused it; no VM saw it
    DELIVERY_UNKNOWN    retry           UNAVAILABLE        sent, then the stream broke: it may have run
    NO_ANSWER           DEADLINE_EXCEEDED                  the deadline passed first: it may have run

The sentences are leasenet's own: a consumer VM never learns which producer host or VM served it
(SPEC §10), nor any internal exception's text; the consumer host's log has the detail."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wire.errors import DeadlineExceeded, ProducerUnavailable
from wire.verdict import Refusal


class Happened(Enum):
    """What became of one attempt that got no answer from a producer VM."""

    NOT_DELIVERED = "not delivered"
    REFUSED = "refused by its producer host"
    DELIVERY_UNKNOWN = "delivery unknown"
    NO_ANSWER = "no answer before the deadline"


@dataclass(frozen=True, slots=True)
class Retry:
    """Try another VM: this attempt cannot have run. The other answer, a wire.verdict.Refusal, is
    final: the consumer VM gets its status and sentence."""

    happened: Happened


NOT_IDEMPOTENT = "it is not idempotent"


def verdict(happened: Happened, idempotent: bool, request_id: int, *, why_not: str = NOT_IDEMPOTENT) -> Retry | Refusal:
    """`idempotent`: running the request again is safe; else `why_not` says why it is not (a VIP call
    marked idempotent is not safe to run again once part of its answer went back, say)."""
    if happened is Happened.NO_ANSWER:
        return Refusal(DeadlineExceeded, f"request {request_id} got no answer from its producer VM before the "
                                            f"deadline (it may have run)")
    if happened is Happened.DELIVERY_UNKNOWN and not idempotent:
        return Refusal(ProducerUnavailable, f"delivery unknown: the tunnel broke after request {request_id} was "
                                            f"sent, so it may have run; {why_not}, so it was not retried")
    return Retry(happened)


def out_of_attempts(last: Retry, request_id: int, attempts: int) -> Refusal:
    """Every attempt ended in a retry: the request fails, saying what happened to the last one."""
    return Refusal(ProducerUnavailable, f"request {request_id} was not answered after {attempts} attempts "
                                        f"(the last: {last.happened.value})")

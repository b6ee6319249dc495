"""What a consumer VM is told when something behind its consumer host fails (SPEC §10: it never
learns which producer host or producer VM served it, nor any internal name or exception). Pure.

The consumer host hears sentences from the leasing agents and the producer hosts; they are written
for operators and may name hosts, addresses, lease ids or etcd calls. They go to the consumer
host's log; the consumer VM gets a sentence from here, chosen by the error's type:

    from a leasing agent (a new lease)      kept when about the tenant's own request (SPEC §3 wants
                                            RESOURCE_EXHAUSTED to name the service and shortfall);
                                            replaced for unavailability, conflicts and anything else
    from a producer host (a frame answer)   kept for INVALID_ARGUMENT (the service's handler
                                            refusing the request: the service's own answer);
                                            replaced for every other status
"""

from __future__ import annotations

from wire.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LeasenetError,
    NotFound,
    PermissionDenied,
    PoolExhausted,
    ProducerUnavailable,
    Status,
    StoreUnavailable,
    Unavailable,
    error_for_status,
)
from wire.verdict import Refusal

# a leasing agent's sentence for these is about the consumer VM's own request and names nothing internal
_KEPT_FROM_LEASING = (NotFound, PermissionDenied, InvalidRequest, PoolExhausted)


def lease_refused(error: LeasenetError, service: str, consumer: str) -> Refusal:
    """A leasing agent refused (or could not be asked for) a new lease of `service` for the
    consumer VM `consumer`: the refusal the consumer VM's waiting requests fail with."""
    kind = type(error)
    if isinstance(error, _KEPT_FROM_LEASING) and kind.code == error.code:
        return Refusal(kind, error.message)
    if isinstance(error, ProducerUnavailable):  # producer hosts re-registering: a wait, not exhaustion
        return Refusal(ProducerUnavailable, f"the producer VMs of service {service!r} are coming back after a "
                                            "restart; try again shortly")
    if isinstance(error, Unavailable):
        return Refusal(StoreUnavailable, f"no lease of service {service!r} can be granted for consumer VM "
                                         f"{consumer} now: the leasing agents or etcd is unavailable")
    return Refusal(type(error), f"the leasing service refused a lease of service {service!r} for consumer VM {consumer} "
                   f"({error.code.name}); see the consumer host's log")


def producer_answer(code: Status, message: str, request_id: int) -> LeasenetError:
    """The error for a frame answered by a producer host with status `code` after its VM got it."""
    if code is Status.INVALID_ARGUMENT:
        return InvalidRequest(message)
    if code is Status.UNAVAILABLE:
        return ProducerUnavailable(f"request {request_id}: its producer VM stopped before answering (it may "
                                   "have run)")
    if code is Status.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"request {request_id} reached its deadline at its producer VM (it may have run)")
    if code is Status.INTERNAL:
        return LeasenetError(f"request {request_id}: the service's handler failed; the producer's log has why")
    return error_for_status(code, f"request {request_id} failed at its producer VM with {code.name}")

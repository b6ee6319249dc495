"""How much a producer host takes at once (SPEC §10: every queue bounded; what does not fit gets
RESOURCE_EXHAUSTED with a sentence), and those sentences. Pure: numbers and words only.

The sentences travel back to a consumer host, never name a producer VM or host (SPEC §10), and
say what to do: the consumer host takes a refused frame to another VM."""

from __future__ import annotations

from dataclasses import dataclass, fields

from wire.errors import Overloaded

__all__ = ["Limits", "Overloaded"]  # Overloaded: the one error type for a full bound (wire.errors)


@dataclass(frozen=True, slots=True)
class Limits:
    # requests queued for one VM behind the one it runs (a consumer host sends one at a time)
    vm_queue: int = 16
    # frames of the whole host waiting for their claim to reach its replica (SPEC §3 step 11), and
    # their payload bytes (a payload may be 1 MiB: a count alone would let 256 of them hold 256 MiB)
    early_frames: int = 256
    early_bytes: int = 16 * 1024 * 1024
    # requests of one tunnel stream handed to VMs and not yet answered, and their payload bytes
    stream_in_flight: int = 1024
    stream_in_flight_bytes: int = 64 * 1024 * 1024
    # answers of one stream waiting to be written; past it the host reads no more of that stream
    reply_queue: int = 1024
    # tunnel streams one consumer host may hold open to this host at once (it uses one; tools more)
    streams_per_peer: int = 16
    # RPCs the server runs at once (tunnel streams, transparent calls, health checks); past it gRPC
    # refuses new ones
    concurrent_rpcs: int = 256
    # HTTP/2 streams on one connection: a consumer host's tunnel streams, health checks, and one per
    # transparent call (each holds or waits for a VM, so the VMs' bounded queues bound them too);
    # past it a new stream waits on the consumer host's side. 16 would hold a consumer host to 15
    # calls at once on this host however many of its VMs it leases
    streams_per_connection: int = 256
    # the longest a handler may run when the frame carries no deadline, and a cap on any deadline
    handler_timeout: float = 30.0  # seconds

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name.replace('_', '-')} must be positive, not {getattr(self, f.name)}")


def vm_queue_full(limit: int) -> str:
    return f"its producer VM has {limit} requests queued already, the most it queues; try again later"


def early_frames_full(frames: int, size: int) -> str:
    return (f"the frames waiting for their claims to reach this producer host are at its limit ({frames} "
            f"frames, {size} bytes of payload); try again later")


def stream_in_flight_full(frames: int, size: int) -> str:
    return (f"this tunnel stream's requests in flight are at their limit ({frames} requests, {size} bytes of "
            f"payload); try again later")


def streams_per_peer_full(peer: str, limit: int) -> str:
    return f"{peer} already holds {limit} tunnel streams to this producer host, the most one consumer host may hold"


DRAINING = "its producer host is shutting down and takes no new request; it was not run"
CLAIM_ENDED = "the claim this request was sent under ended before its producer VM ran it; it was not run"
DEADLINE_WHILE_QUEUED = "the request's deadline passed while it queued for its producer VM"
DEADLINE_WHILE_RUNNING = "its producer VM did not finish the request before its deadline; the request was stopped"
HANDLER_FAILED = "the handler of its producer VM failed; see the producer host's log"
BAD_ANSWER = "its producer VM's answer was not bytes within the payload limit; see the producer host's log"

"""A tunnel frame's life cycle at the consumer host, as a table (h11 style): the one place that says
which side of a broken stream a frame was on. The tunnel's writer and reader drive it; it does no
I/O and knows no grpc.

    QUEUED ---write began---> WRITING ---write done---> WRITTEN
       ^                       |   |                       |
       +----write refused------+   +---answer---> ANSWERED <--answer

    stream ended:  QUEUED -> NOT_DELIVERED;  WRITING, WRITTEN -> DELIVERY_UNKNOWN
    stream refused (the producer host said no to the whole stream before reading a frame of it, e.g.
    VersionMismatch):  QUEUED, WRITING, WRITTEN -> NOT_DELIVERED
    given up (the deadline passed, or the caller left):  QUEUED, WRITING, WRITTEN -> ABANDONED

A frame leaves this host only during a write, so a frame that was never in WRITING always ends
NOT_DELIVERED when its stream ends, however the stream ended. A write the call refused because it
had already finished ("write refused") puts its frames back in QUEUED: nothing of them left."""

from __future__ import annotations

from enum import Enum

from consumer_host.failover import Happened


class State(Enum):
    QUEUED = "queued"
    WRITING = "writing"
    WRITTEN = "written"
    ANSWERED = "answered"
    NOT_DELIVERED = "not delivered"
    DELIVERY_UNKNOWN = "delivery unknown"
    ABANDONED = "abandoned"


class Event(Enum):
    WRITE_BEGAN = "write began"
    WRITE_DONE = "write done"
    WRITE_REFUSED = "write refused"
    ANSWER = "answer"
    STREAM_ENDED = "stream ended"
    STREAM_REFUSED = "stream refused"
    GIVEN_UP = "given up"


QUEUED, WRITING, WRITTEN = State.QUEUED, State.WRITING, State.WRITTEN

TRANSITIONS: dict[tuple[State, Event], State] = {
    (QUEUED, Event.WRITE_BEGAN): WRITING,
    (QUEUED, Event.STREAM_ENDED): State.NOT_DELIVERED,
    (QUEUED, Event.GIVEN_UP): State.ABANDONED,
    (QUEUED, Event.STREAM_REFUSED): State.NOT_DELIVERED,
    (WRITING, Event.STREAM_REFUSED): State.NOT_DELIVERED,
    (WRITTEN, Event.STREAM_REFUSED): State.NOT_DELIVERED,
    (WRITING, Event.WRITE_DONE): WRITTEN,
    (WRITING, Event.WRITE_REFUSED): QUEUED,
    (WRITING, Event.ANSWER): State.ANSWERED,
    (WRITING, Event.STREAM_ENDED): State.DELIVERY_UNKNOWN,
    (WRITING, Event.GIVEN_UP): State.ABANDONED,
    (WRITTEN, Event.ANSWER): State.ANSWERED,
    (WRITTEN, Event.STREAM_ENDED): State.DELIVERY_UNKNOWN,
    (WRITTEN, Event.GIVEN_UP): State.ABANDONED,
}

# what a frame's end on a broken stream means to the failover verdict
HAPPENED: dict[State, Happened] = {
    State.NOT_DELIVERED: Happened.NOT_DELIVERED,
    State.DELIVERY_UNKNOWN: Happened.DELIVERY_UNKNOWN,
}


class FrameStateError(Exception):
    """An event that cannot happen to a frame in its state (e.g. an answer to a frame never sent)."""


def advance(state: State, event: Event) -> State:
    """The frame's next state; FrameStateError, and no change, if the event is illegal in `state`."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise FrameStateError(f"a frame that is {state.value} cannot take '{event.value}'") from None

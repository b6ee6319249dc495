"""W3C trace context (https://www.w3.org/TR/trace-context/), pure: parse and format `traceparent`,
make ids, and the request a log record belongs to.

A request's traceparent comes from the consumer VM's gRPC metadata when it sent one, else the
consumer host starts a trace; it rides the tunnel frame to the producer host and back, and the
consumer VM gets it in the answer's trailing metadata. The hot path carries it as a string: ids
come from random.getrandbits (not os.urandom: ids need to be unique, not secret), and no span
object exists unless an exporter is configured (wire/otel.py)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from typing import NamedTuple, Protocol

TRACEPARENT = "traceparent"  # the W3C header, and our gRPC metadata key

_HEADER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
SAMPLED = 0x01


class TraceParent(NamedTuple):
    """A trace id and the span that is the parent of the receiver's work. A NamedTuple, not a
    frozen dataclass: one is made per request, and this builds in a third of the time."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    flags: int = SAMPLED

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self, span_id: str | None = None) -> TraceParent:
        """The same trace with our span (`span_id`, or a fresh one) as the next hop's parent."""
        return TraceParent(self.trace_id, span_id or new_span_id(), self.flags)


def parse(value: str) -> TraceParent | None:
    """The traceparent a header names, or None when it is malformed: the W3C rule is to ignore a
    bad header and start a new trace, never to fail the request. Versions above 00 are read by
    their 00 prefix (the spec's forward compatibility); version ff is invalid."""
    m = _HEADER.match(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags = m.groups()
    rest = value.strip()[m.end():]
    if version == "ff" or (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def trace_id_of(header: str) -> str:
    """The trace id of a header this code wrote (a frame's), without parsing it: "" for none."""
    return header[3:35] if len(header) >= 55 else ""


def new_trace_id() -> str:
    return f"{random.getrandbits(128) | 1:032x}"  # all zero is invalid: one bit is given up for that


def new_span_id() -> str:
    return f"{random.getrandbits(64) | 1:016x}"


def start(header: str | None) -> TraceParent:
    """This hop's traceparent for a request whose caller sent `header` (None: it sent none): the
    caller's trace continued with a fresh span id, or a new trace."""
    parent = parse(header) if header else None
    if parent is not None:
        return parent.child()
    ids = f"{random.getrandbits(192) | _LOW_BITS:048x}"  # both ids from one draw, neither all zero
    return TraceParent(ids[:32], ids[32:], SAMPLED)


_LOW_BITS = (1 << 64) | 1


class LogContext(NamedTuple):
    """What a log record says about the request it was written for (wire/logs.py reads it)."""

    trace_id: str
    request_id: int | None = None


CURRENT: ContextVar[LogContext | None] = ContextVar("leasenet_request", default=None)


def bind(trace_id: str, request_id: int | None = None) -> Token[LogContext | None]:
    """Log records written in this task (and tasks it starts) from now on name this request."""
    return CURRENT.set(LogContext(trace_id, request_id))


class Spans(Protocol):
    """Where a process's spans go: wire.otel.OtelSpans with --otlp-endpoint, else NO_SPANS."""

    enabled: bool

    def span(self, name: str, parent: TraceParent | None = None) -> AbstractContextManager[TraceParent | None]:
        """A span around a block; it yields its own context (None: no span was made)."""
        ...

    def started(self, name: str, parent: TraceParent | None = None) -> Callable[[int], None]:
        """A span ended later, elsewhere, by calling the result with the status code."""
        ...

    def close(self) -> None: ...


class NoSpans:
    """No exporter: spans cost one shared no-op context manager, and nothing is recorded."""

    enabled = False
    _NOTHING = nullcontext()

    def span(self, name: str, parent: TraceParent | None = None) -> AbstractContextManager[TraceParent | None]:
        return self._NOTHING

    def started(self, name: str, parent: TraceParent | None = None) -> Callable[[int], None]:
        return _ignore

    def close(self) -> None:
        pass


def _ignore(status_code: int) -> None:
    pass


NO_SPANS = NoSpans()

"""Spans with OpenTelemetry's SDK, exported over OTLP/gRPC, for a process given --otlp-endpoint.
Without one a process uses wire.trace.NO_SPANS and makes no span object per request.

A span is opened under a parent named by a traceparent (the caller's, or the tunnel frame's) or,
without one, under the span current in this task (or as a new trace's root); it yields its own
context as a TraceParent, which the next hop gets as its parent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from wire.trace import TraceParent

EXPORT_TIMEOUT_S = 5.0


class OtelSpans:
    """Spans of one process (`kind`, `host`), batched to the exporter in a background thread."""

    enabled = True

    def __init__(self, endpoint: str, kind: str, host: str, *, exporter: SpanExporter | None = None) -> None:
        if exporter is None:
            plaintext = not endpoint.startswith("https://")  # host:port or http:// (a local collector)
            exporter = OTLPSpanExporter(endpoint=endpoint, insecure=plaintext, timeout=EXPORT_TIMEOUT_S)
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": f"leasenet-{kind}", "service.instance.id": host}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("leasenet")

    @contextmanager
    def span(self, name: str, parent: TraceParent | None = None) -> Iterator[TraceParent]:
        with self.tracer.start_as_current_span(name, context=_context(parent)) as span:
            own = span.get_span_context()
            yield TraceParent(f"{own.trace_id:032x}", f"{own.span_id:016x}", int(own.trace_flags))

    def started(self, name: str, parent: TraceParent | None = None) -> Callable[[int], None]:
        """A span that ends in another task (a producer VM's actor answers): call the result with
        the answer's status code (a grpc number) to end it."""
        span = self.tracer.start_span(name, context=_context(parent))

        def end(status_code: int) -> None:
            span.set_attribute("rpc.grpc.status_code", status_code)
            span.end()
        return end

    def close(self) -> None:
        """Export what is still batched (at shutdown)."""
        self.provider.shutdown()


def _context(parent: TraceParent | None) -> Context | None:
    """An OpenTelemetry context whose current span is the remote `parent` (None: this task's own)."""
    if parent is None:
        return None
    remote = SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
                         trace_flags=TraceFlags(parent.flags))
    return set_span_in_context(NonRecordingSpan(remote))

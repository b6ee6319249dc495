"""The size limits every process shares (pure: no grpc), so that gRPC's own limits follow from the
payload limit and cannot drift from it.

A payload over MAX_PAYLOAD_BYTES is refused by leasenet's own checks with a sentence that says so
(the consumer host's API, the producer host's frame validation). gRPC's message limit sits above
it with headroom: a tunnel stream message gathers frames up to MAX_BATCH_BYTES of payload and then
one frame more, so it stays under MAX_MESSAGE_BYTES; only a message far over the payload limit
meets gRPC's own RESOURCE_EXHAUSTED, before any of our code sees it."""

from __future__ import annotations

MAX_PAYLOAD_BYTES = 1024 * 1024  # a request's or an answer's payload
MAX_BATCH_BYTES = MAX_PAYLOAD_BYTES  # a tunnel batch gathers frames up to this much payload, then one more
HEADER_HEADROOM_BYTES = 1024 * 1024  # headers of the frames in one batch, and oversized payloads we answer ourselves
MAX_MESSAGE_BYTES = MAX_BATCH_BYTES + MAX_PAYLOAD_BYTES + HEADER_HEADROOM_BYTES


def payload_too_large(size: int) -> str | None:
    """The sentence for a payload over the limit, None when it fits."""
    if size <= MAX_PAYLOAD_BYTES:
        return None
    return f"payload of {size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"

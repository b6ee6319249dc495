"""W3C traceparent parsing and formatting (wire/trace.py), and the no-exporter spans."""

from __future__ import annotations

import pytest

from wire.trace import NO_SPANS, TraceParent, new_span_id, new_trace_id, parse, start, trace_id_of

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_well_formed_header_parses_to_its_ids_and_flags() -> None:
    assert parse(GOOD) == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)


def test_a_parsed_header_formats_back_to_the_same_text() -> None:
    assert parse(GOOD).header() == GOOD  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [
    "", "garbage", GOOD.upper(), GOOD[:-1], GOOD + "-extra",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",   # a short trace id
])
def test_a_malformed_header_is_ignored_rather_than_failing_the_request(bad: str) -> None:
    assert parse(bad) is None


def test_a_later_version_is_read_by_its_version_00_fields() -> None:
    later = "01" + GOOD[2:] + "-what-comes-next"
    assert parse(later) == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)


def test_an_unsampled_flag_is_kept() -> None:
    assert parse(GOOD[:-2] + "00").sampled is False  # type: ignore[union-attr]


def test_starting_from_a_callers_header_keeps_its_trace_with_a_new_span() -> None:
    ours = start(GOOD)
    assert (ours.trace_id, ours.flags) == ("4bf92f3577b34da6a3ce929d0e0e4736", 1)
    assert ours.span_id != "00f067aa0ba902b7"


def test_starting_without_a_header_makes_a_fresh_valid_trace() -> None:
    first, second = start(None), start("not a traceparent")
    assert parse(first.header()) == first
    assert first.trace_id != second.trace_id


def test_ids_have_the_w3c_widths() -> None:
    assert (len(new_trace_id()), len(new_span_id())) == (32, 16)


def test_the_trace_id_of_a_header_is_read_without_parsing() -> None:
    assert trace_id_of(GOOD) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of("") == ""


def test_without_an_exporter_a_span_yields_nothing_and_records_nothing() -> None:
    with NO_SPANS.span("admit", parse(GOOD)) as span:
        assert span is None
    NO_SPANS.started("execute")(0)

"""Log set-up (wire/logs.py): JSON lines with the process and the request, text with the trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from leasenet import cli
from wire import logs
from wire.trace import CURRENT, bind


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_names_the_time_level_process_and_message(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup("INFO", "json", kind="consumer", host="c1", stream=out)
    logging.getLogger("consumer_host.service").info("serving %d VMs", 3)
    [line] = lines(out)
    assert {k: line[k] for k in ("level", "kind", "host", "logger", "message")} == {
        "level": "INFO", "kind": "consumer", "host": "c1", "logger": "consumer_host.service",
        "message": "serving 3 VMs"}
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert "trace_id" not in line and "request_id" not in line


def test_a_record_written_for_a_request_carries_its_trace_and_request_id(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup("DEBUG", "json", kind="consumer", host="c1", stream=out)
    token = bind("4bf92f3577b34da6a3ce929d0e0e4736", 7)
    try:
        logging.getLogger("x").debug("answered")
    finally:
        CURRENT.reset(token)
    logging.getLogger("x").debug("after")
    first, after = lines(out)
    assert (first["trace_id"], first["request_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", 7)
    assert "trace_id" not in after


def test_an_explicit_trace_id_wins_over_the_current_request(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup("INFO", "json", kind="producer", host="p1", stream=out)
    token = bind("a" * 32, 1)
    try:
        logging.getLogger("x").info("answer", extra={"trace_id": "b" * 32, "request_id": 2})
    finally:
        CURRENT.reset(token)
    [line] = lines(out)
    assert (line["trace_id"], line["request_id"]) == ("b" * 32, 2)


def test_extra_fields_become_keys_and_a_traceback_stays_on_one_line(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup("INFO", "json", kind="registry", host="r1", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed", extra={"action": "grant", "pool": "echo/blue/10.1.0.1"})
    [line] = lines(out)
    assert (line["action"], line["pool"]) == ("grant", "echo/blue/10.1.0.1")
    assert "RuntimeError: boom" in line["exception"]


def test_the_text_format_appends_the_trace_id_when_there_is_one(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    token = bind("c" * 32)
    try:
        logging.getLogger("x").info("hello")
    finally:
        CURRENT.reset(token)
    logging.getLogger("x").info("bye")
    first, second = out.getvalue().splitlines()
    assert first.endswith("x: hello [trace " + "c" * 32 + "]")
    assert second.endswith("x: bye")


def test_an_unknown_format_is_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="log format 'xml' is not one of text, json"):
        logs.setup("INFO", "xml")


def test_the_cli_refuses_an_unknown_log_format_from_the_environment_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_root: None) -> None:
    monkeypatch.setenv("LEASENET_LOG_FORMAT", "xml")
    code = cli.main(["registry", "--etcd-endpoints", "127.0.0.1:1", "--insecure"])
    assert (code, capsys.readouterr().err) == (1, "leasenet: log format 'xml' is not one of text, json\n")


def test_the_text_format_s_time_is_logging_s_own_though_made_once_per_second() -> None:
    ours, stock = logs.TextFormatter(logs.TEXT_FORMAT), logging.Formatter(logs.TEXT_FORMAT)
    for created in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5, 1_700_000_000.9):
        record = logging.makeLogRecord({"msg": "m", "created": created, "msecs": created % 1 * 1000})
        assert ours.formatTime(record) == stock.formatTime(record)

"""Log set-up for every leasenet process: text (the default, for people) or JSON (one object per
line, for machines) with time, level, process kind, host id, and the request's trace id and
request id where there is one (from wire.trace.CURRENT, or given per record as `extra`).

A record's `extra` fields beyond the standard ones (an audit line's who/what/which pool) become
keys of its JSON object."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from wire.trace import CURRENT

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request)s"
# every attribute a LogRecord has without `extra` (and the ones this module adds): the rest is extra
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request", "trace_id",
                                                             "request_id", "kind", "host"}


class RequestFilter(logging.Filter):
    """Stamps each record with its request's trace id and request id and the process's identity.
    An explicit `extra={"trace_id": ...}` wins: a producer VM's actor answers outside the request's
    task, so it names the request itself."""

    def __init__(self, kind: str, host: str) -> None:
        super().__init__()
        self.kind, self.host = kind, host

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            current = CURRENT.get()
            record.trace_id = current.trace_id if current else ""
            if not hasattr(record, "request_id"):
                record.request_id = current.request_id if current else None
        elif not hasattr(record, "request_id"):
            record.request_id = None
        record.kind, record.host = self.kind, self.host
        record.request = f" [trace {record.trace_id}]" if record.trace_id else ""
        return True


class TextFormatter(logging.Formatter):
    """logging's own text format, with the time's text made once per second instead of per record
    (localtime and strftime were a third of a registry's cost per log line)."""

    _second: int | None = None
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self.default_time_format, self.converter(record.created))
        return self.default_msec_format % (self._text, record.msecs)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a field, its newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "kind": getattr(record, "kind", ""),
            "host": getattr(record, "host", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "trace_id", ""):
            out["trace_id"] = record.trace_id  # type: ignore[attr-defined]
        if getattr(record, "request_id", None) is not None:
            out["request_id"] = record.request_id  # type: ignore[attr-defined]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _utc(created: float) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def setup(level: str = "INFO", fmt: str = "text", *, kind: str = "", host: str = "",
          stream: IO[str] | None = None) -> None:
    """Configure the root logger once per process: `fmt` is text or json (anything else is a
    ValueError with a sentence), `kind` and `host` name this process in every record."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    _skip_unused_record_fields()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestFilter(kind, host))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))


def _skip_unused_record_fields() -> None:
    """Neither format shows where a record was logged from, nor its thread or process: logging then
    need not walk the stack nor look them up for every record (the optimisations of the logging
    HOWTO): an audit line (one per grant and per release) costs 12 us instead of 14."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

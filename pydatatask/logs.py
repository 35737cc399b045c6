"""Log output: one JSON object per event (``--log-format json``) or the human lines.

The package logs under ``pydatatask``; per-job events (a job started, retrying, succeeded,
failed) go to ``pydatatask.jobs`` at INFO (``-v``) and carry ``task``, ``key``,
``attempt``, ``state``, ``duration``, ``error_type`` and ``exit_code`` as record
attributes, which :class:`JsonFormatter` writes as fields::

    {"time": "2026-11-23T01:02:03.123456+00:00", "level": "info", "logger": "pydatatask.jobs",
     "message": "task count: 'a' failed after 2 attempt(s) in 0.012s (ValueError)",
     "task": "count", "key": "a", "state": "failed", "attempt": 2, "duration": 0.012,
     "error_type": "ValueError", "exit_code": null}
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import TextIO

from .errors import ConfigurationError

__all__ = ("JsonFormatter", "TextFormatter", "configure_logging", "LOG_FORMATS", "EVENT_FIELDS")

LOG_FORMATS = ("text", "json")
#: the record attributes a JSON line carries when an event sets them
EVENT_FIELDS = ("task", "key", "attempt", "state", "duration", "error_type", "exit_code")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, the event
    fields that are set, and ``exception`` (type and message) when one is attached."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line of ``record``."""
        out: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["exception"] = {"type": type(exc).__name__, "message": str(exc)}
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``level: message``, the human default."""

    def __init__(self) -> None:
        super().__init__("%(levelname_lower)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The line of ``record``."""
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


class _StreamHandler(logging.Handler):
    """Writes to ``stream``, or to whatever ``sys.stderr`` is at the time (so a live display
    can redirect it)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream or sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(
    format: str = "text", level: int = logging.INFO, *, stream: TextIO | None = None
) -> logging.Handler:
    """Send the ``pydatatask`` logs at ``level`` and above to ``stream`` (default: stderr)
    in ``format`` (``"text"`` or ``"json"``); return the handler (remove it from
    ``logging.getLogger("pydatatask")`` to undo)."""
    if format not in LOG_FORMATS:
        raise ConfigurationError(f"unknown log format {format!r}; formats: {', '.join(LOG_FORMATS)}")
    handler = _StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    logger = logging.getLogger("pydatatask")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler

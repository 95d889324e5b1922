"""The server's log lines: text for people (the default) or JSON for log pipelines.

Both name the call a line is about: :class:`RequestFields` adds the current
call's request id, trace id, model, version and method (see
:mod:`~hessd_server.serving.observability.request_context`) to every record, and a line
logged with ``extra={"code": ..., "reason": ...}`` (a failed call) carries those too.

>>> import logging
>>> record = logging.LogRecord("hessd_server", logging.INFO, __file__, 1, "ready", None, None)
>>> RequestFields().filter(record)
True
>>> sorted(JsonFormatter().as_fields(record))[:4]
['code', 'level', 'logger', 'message']
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from .request_context import current

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""A text line before the request fields."""

REQUEST_FIELDS = ("request_id", "trace_id", "model", "version", "method", "code", "reason")
"""The fields a line about a call carries; empty strings on other lines."""


class RequestFields(logging.Filter):
    """Adds :data:`REQUEST_FIELDS` of the current call to every record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = current()
        if request is not None:
            fields = {
                "request_id": request.request_id,
                "trace_id": "" if request.trace is None else request.trace.trace_id,
                "model": request.model,
                "version": request.version,
                "method": request.method,
            }
        else:
            fields = {}
        for name in REQUEST_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, fields.get(name, ""))
        return True


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, then ``[request_id=... trace_id=...]`` on lines about a call."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "")
        if not request_id:
            return line
        trace_id = getattr(record, "trace_id", "")
        suffix = f" trace_id={trace_id}" if trace_id else ""
        head, newline, rest = line.partition("\n")
        return f"{head} [request_id={request_id}{suffix}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, the :data:`REQUEST_FIELDS`, and ``exception`` (the traceback) when
    the record has one."""

    def as_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's fields, as :meth:`format` writes them."""
        fields: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            fields[name] = str(getattr(record, name, ""))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return fields

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.as_fields(record), ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send the process's log lines to stderr at ``level``, in ``log_format``
    (``"text"`` or ``"json"``), each with the fields of the call it is about."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestFields())
    logging.basicConfig(level=level, handlers=[handler], force=True)

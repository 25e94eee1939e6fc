"""Structured (JSON) logs for every process: one object per line on stderr.

A line logged while an ingest request is handled carries that request's id
(``request_id``, set by ``ingest.metrics.ObservabilityMiddleware`` through
:data:`REQUEST_ID`). The same id travels in the stream entry, so a worker's
line about an entry and the entry's ``actions`` row lead back to the request.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# The id of the request being handled in this context (each ASGI request runs
# in a task of its own, with a copy of the context), or None outside requests.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        entry = {"ts": created.isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON; idempotent.

    uvicorn's own lines (start-up, "Exception in ASGI application") are sent
    through the same handler, so a process logs nothing but JSON; its access
    log stays off (ingest writes its own, see ``ingest.metrics``)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JSONFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    handler.setLevel(level.upper())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.handlers[:] = []
    uvicorn_logger.propagate = True

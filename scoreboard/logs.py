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
# Extras that only repeat the message: uvicorn adds ``color_message``, the same
# text with ANSI colour codes, for its own coloured console formatter.
_REPEATS = {"color_message"}
_LEFT_OUT = _STANDARD | _REPEATS

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
        entry.update({k: v for k, v in vars(record).items() if k not in _LEFT_OUT})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON; idempotent.

    uvicorn's and arq's own lines (start-up, "Exception in ASGI application")
    are sent through the same handler, so a process logs nothing but JSON, each
    line once; uvicorn's access log stays off (ingest writes its own, see
    ``ingest.metrics``). Called again, it only applies ``level``."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h.formatter, JSONFormatter)]
    if not handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(JSONFormatter())
        root.handlers[:] = handlers = [stderr]
    for handler in handlers:
        handler.setLevel(level.upper())
    root.setLevel(level.upper())
    # Libraries that bring a console handler of their own would print each line
    # twice (theirs, then ours through the root): theirs are removed.
    for name in OWN_HANDLERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers[:] = []
        library_logger.propagate = True


# uvicorn's start-up lines; arq's worker lines (its CLI installs a plain-text
# handler on "arq" before our code runs: see LOG_CONFIG).
OWN_HANDLERS = ("uvicorn", "arq")

# ``arq --custom-log-dict scoreboard.logs.LOG_CONFIG`` (the Procfile's worker):
# arq's CLI configures logging before importing anything of ours; with this its
# first lines ("Starting worker ...") are JSON too, and printed once.
LOG_CONFIG: dict[str, object] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JSONFormatter}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"arq": {"handlers": [], "propagate": True}},
}

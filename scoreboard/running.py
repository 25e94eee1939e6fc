"""Where a running ``scoreboard run`` keeps its embedded servers' addresses.

The run command writes ``<DATA_DIR>/running.json`` once its servers are up
and removes it when it stops; every other command on the same data folder
(``admin``, ``rebuild-board``, ``migrate``, ``python -m workers.health``)
reads it when ``REDIS_URL`` / ``DATABASE_URL`` are not set, so it talks to
the servers that are running instead of starting others.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import orjson

from scoreboard.settings import Settings


def running_file(settings: Settings) -> Path:
    return settings.data_dir / "running.json"


def running_urls(settings: Settings) -> tuple[str, str] | None:
    """The embedded servers' URLs of a ``scoreboard run`` that is still running."""
    path = running_file(settings)
    if not path.exists():
        return None
    urls = orjson.loads(path.read_bytes())
    port = int(urls["redis_url"].rsplit(":", 1)[1].split("/")[0])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return None  # a run that did not stop cleanly
    return urls["redis_url"], urls["database_url"]


def with_running_servers(settings: Settings) -> Settings:
    """``settings`` with the URLs of a running ``scoreboard run`` filled in, when
    neither URL is set and one is running; otherwise unchanged."""
    if settings.redis_url is not None or settings.database_url is not None:
        return settings
    running = running_urls(settings)
    if running is None:
        return settings
    return replace(settings, redis_url=running[0], database_url=running[1])

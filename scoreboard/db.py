"""The asyncpg pool, created in each process's lifespan and passed down.

Rows come back as records; JSON columns are decoded with orjson.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

COMMAND_TIMEOUT_S = 10.0


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead of its own."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


async def _init_connection(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(name, encoder=lambda v: orjson.dumps(v).decode(),
                                        decoder=orjson.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> Any:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     command_timeout=COMMAND_TIMEOUT_S, init=_init_connection)

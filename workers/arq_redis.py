"""arq's Redis client for the worker, whose commands wait out a Redis outage.

arq's job loop has no error handling of its own: one ``ConnectionError`` from
its poll (Redis restarting) ends the worker process, stream consumer and all.
redis-py's ``Retry`` does not help here: it covers a command on a connection,
not taking a connection from the pool, which is what fails while Redis is
down. So every command of arq's client retries connection failures itself,
with capped backoff, for as long as Redis is away; the worker's process then
carries on when Redis is back. The stream consumer does the same in its own
loop (workers/consumer.py). A command cut off mid-way may run twice: arq's
commands (reads, SET/PSETEX, ZADD of a job id, DEL) are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.exceptions
from arq.connections import ArqRedis

from workers.batching import backoff_s

logger = logging.getLogger(__name__)

RETRY_CAP_S = 5.0


class ResilientArqRedis(ArqRedis):
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                attempt += 1
                delay = backoff_s(attempt, cap_s=RETRY_CAP_S)
                if attempt == 1 or delay == RETRY_CAP_S:
                    logger.warning("arq: Redis unreachable (%r); retrying %s in %.1f s (try %d)",
                                   exc, args[0] if args else "?", delay, attempt)
                await asyncio.sleep(delay)


def arq_pool(redis_url: str, *, queue_name: str) -> ResilientArqRedis:
    """The pool arq uses (its ``redis_pool`` setting). Creating it connects nothing:
    connections are made when the worker runs, in its event loop."""
    pool: ResilientArqRedis = ResilientArqRedis.from_url(redis_url, socket_connect_timeout=2)
    pool.default_queue_name = queue_name
    return pool

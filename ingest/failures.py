"""Which exceptions a route may let out become which answers: one table, used by
Starlette's exception handlers (``ingest.app``) and by the hot path
(``ingest.hot_path``), which serves its requests outside Starlette's stack and
must answer them the same way.
"""

from __future__ import annotations

import logging

import asyncpg
import redis.exceptions

from scoreboard.errors import RequestError
from scoreboard.redis_clients import cluster_unsettled

logger = logging.getLogger("ingest.app")

RETRY_AFTER_UNAVAILABLE_S = 1

# Redis or Postgres did not answer: 503, the client retries, nothing was half-written.
# On a cluster, also a slot without a master for a moment (a failover under way).
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
               redis.exceptions.ClusterError, redis.exceptions.TryAgainError,
               redis.exceptions.SlotNotCoveredError,
               asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
               asyncpg.InterfaceError, ConnectionError, TimeoutError)

INTERNAL_ERROR = RequestError(500, "internal_error", "the server failed unexpectedly")


def dependency_down(path: str, exc: BaseException) -> RequestError:
    logger.warning("dependency unavailable on %s: %r", path, exc)
    return RequestError(503, "unavailable", "a storage dependency is unavailable; retry shortly",
                        retry_after_s=RETRY_AFTER_UNAVAILABLE_S)


def redis_full(path: str) -> RequestError:
    """Redis is at its ``maxmemory`` (``noeviction``): it refused the write, so nothing
    was written; the same answer as a backlog over ``MAX_BACKLOG``."""
    logger.warning("redis refused a write (maxmemory) on %s", path)
    return RequestError(503, "overloaded", "storage is full; retry shortly",
                        retry_after_s=RETRY_AFTER_UNAVAILABLE_S)


def answer_for(exc: BaseException, path: str) -> RequestError | None:
    """The answer to ``exc`` raised while serving ``path``; None for an unexpected
    failure (500, and the traceback goes to the server's log)."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return redis_full(path)
    if isinstance(exc, UNAVAILABLE) or cluster_unsettled(exc):
        return dependency_down(path, exc)
    return None

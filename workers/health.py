"""``python -m workers.health``: exit 0 when the worker's job loop and its stream
consumer are both alive (arq's health-check key and the consumer's heartbeat
are fresh), 1 otherwise. For container health checks, and by hand while
``make run`` is up: without ``REDIS_URL`` it finds that run's embedded Redis
(``scoreboard.running``)."""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as redis_asyncio

from scoreboard.keys import Keys
from scoreboard.running import with_running_servers
from scoreboard.settings import load_settings


async def check() -> list[str]:
    settings = with_running_servers(load_settings())
    if settings.redis_url is None:
        return ["REDIS_URL is not set, and no `scoreboard run` is running on"
                f" {settings.data_dir}"]
    keys = Keys(settings.key_prefix)
    client = redis_asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        problems = []
        if not await client.exists(keys.arq_queue + ":health-check"):
            problems.append("arq health-check key is missing or stale")
        if not await client.exists(keys.consumer_heartbeat(settings.consumer)):
            problems.append(f"consumer {settings.consumer} has no recent heartbeat")
        return problems
    finally:
        await client.aclose()


def main() -> int:
    problems = asyncio.run(check())
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

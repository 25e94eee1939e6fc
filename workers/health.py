"""``python -m workers.health``: exit 0 when the worker's job loop and its stream
consumer are both alive (arq's health-check key and the consumer's heartbeat
are fresh), 1 otherwise. For container health checks, and by hand while
``make run`` is up: without ``REDIS_URL`` it finds that run's embedded Redis
(``scoreboard.running``)."""

from __future__ import annotations

import asyncio
import sys

from scoreboard.redis_clients import redis_client
from scoreboard.running import with_running_servers
from scoreboard.settings import load_settings


async def check() -> list[str]:
    settings = with_running_servers(load_settings())
    if settings.redis_url is None:
        return ["REDIS_URL is not set, and no `scoreboard run` is running on"
                f" {settings.data_dir}"]
    keys = settings.keys
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster,
                          socket_connect_timeout=2)
    arq = redis_client(settings.arq_redis_url, cluster=False, socket_connect_timeout=2) \
        if settings.arq_redis_url else client
    try:
        problems = []
        if not await arq.exists(keys.arq_queue + ":health-check"):
            problems.append("arq health-check key is missing or stale")
        for shard in keys.every_shard:  # a consumer per shard's stream, each its heartbeat
            if not await client.exists(shard.consumer_heartbeat(settings.consumer)):
                problems.append(f"consumer {settings.consumer} has no recent heartbeat"
                                + (f" on {shard.stream}" if keys.sharded else ""))
        return problems
    finally:
        if arq is not client:
            await arq.aclose()
        await client.aclose()


def main() -> int:
    problems = asyncio.run(check())
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

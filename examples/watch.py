"""Follow a board live (reconnecting by itself) and print each snapshot.

    .venv/bin/python examples/watch.py --board global
"""

from __future__ import annotations

import argparse
import asyncio

from scoreboard_client import AsyncScoreboardClient


async def watch(args: argparse.Namespace) -> None:
    async with AsyncScoreboardClient(live_url=args.live) as client:
        seen = 0
        async for snapshot in client.live(args.board):
            print(f"v{snapshot.version}:",
                  ", ".join(f"{e.rank}. {e.username} {e.score}" for e in snapshot.entries),
                  flush=True)
            seen += 1
            if args.count and seen >= args.count:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", default="ws://127.0.0.1:8001", help="the broadcaster")
    parser.add_argument("--board", default="global")
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    asyncio.run(watch(parser.parse_args()))


if __name__ == "__main__":
    main()

"""A game backend posting a match's results with the async client; sending the
same batch again is safe (each event id counts once).

    .venv/bin/scoreboard create-backend my-game      # prints the password once
    .venv/bin/python examples/backend_batch.py --username my-game --password ...
"""

from __future__ import annotations

import argparse
import asyncio

from scoreboard_client import AsyncScoreboardClient, Increment


async def post_match(args: argparse.Namespace) -> None:
    async with AsyncScoreboardClient(args.api) as client:
        await client.login(args.username, args.password)
        results = [Increment(user_id=f"player-{n}", points=10 * n, username=f"Player {n}",
                             event_id=f"{args.match}:player-{n}", board=args.board)
                   for n in range(1, 6)]
        first = await client.batch(results)
        again = await client.batch(results)
        print(f"accepted {first.accepted}, duplicates {first.duplicates};"
              f" sent again: accepted {again.accepted}, duplicates {again.duplicates}")
        top = await client.top(args.board, limit=5)
        print("top:", ", ".join(f"{e.rank}. {e.username} {e.score}" for e in top.entries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--board", default="global")
    parser.add_argument("--match", default="match-1")
    asyncio.run(post_match(parser.parse_args()))


if __name__ == "__main__":
    main()

"""A player's session with the blocking client: register (once), log in, score,
read the board, then watch one live snapshot.

    .venv/bin/python examples/play.py --username alice --password "correct horse"
"""

from __future__ import annotations

import argparse

from scoreboard_client import ApiError, NotFound, ScoreboardClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="ingest's URL")
    parser.add_argument("--live", default=None, help="the broadcaster's ws:// URL")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--board", default="global")
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    with ScoreboardClient(args.api, live_url=args.live) as client:
        try:
            client.register(args.username, args.password)
        except ApiError as error:
            if error.code != "username_taken":
                raise
        session = client.login(args.username, args.password)
        print(f"logged in as {args.username} ({session.user_id})")
        for _ in range(args.turns):
            accepted = client.score(board=args.board)
            print(f"accepted: {accepted.event_id}")
        try:
            mine = client.my_rank(args.board)
            print(f"my rank on {args.board}: {mine.rank} with {mine.score}")
        except NotFound:
            print("not on the board yet (a worker counts increments a moment later)")
        feed = client.live(args.board)
        snapshot = next(iter(feed))
        feed.close()
        print(f"live {snapshot.board} v{snapshot.version}:",
              ", ".join(f"{e.rank}. {e.username} {e.score}" for e in snapshot.entries))


if __name__ == "__main__":
    main()

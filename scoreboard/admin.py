"""``scoreboard admin ...``: boards, fraud events, flags, bans, shadow-bans, removing an
action."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
import redis.asyncio as redis_asyncio

from scoreboard.board_defs import create_board, definition, from_json, parse_actions, publish_boards
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.settings import Settings


def add_admin_parser(commands: Any) -> None:
    admin = commands.add_parser("admin", help="fraud events and moderation")
    actions = admin.add_subparsers(dest="admin_command", required=True)
    events = actions.add_parser("events", help="list fraud events, newest first")
    events.add_argument("--user")
    events.add_argument("--limit", type=int, default=50)
    for name, what in [("flag", "hold a user to the flagged limit"),
                       ("ban", "refuse a user's increments and take them off every board"),
                       ("shadow-ban", "take a user off every board without telling them")]:
        command = actions.add_parser(name, help=what)
        command.add_argument("user_id")
        command.add_argument("--reason", default="manual decision")
        if name == "flag":
            command.add_argument("--hours", type=int, default=24)
        lift = actions.add_parser(f"un{name}", help=f"lift a {name}")
        lift.add_argument("user_id")
        lift.add_argument("--reason", default="manual decision")
    remove = actions.add_parser("remove-action",
                                help="delete one action; correct the score everywhere")
    remove.add_argument("event_id")
    remove.add_argument("--reason", default="manual decision")
    actions.add_parser("restore", help="put flags, bans, revoked tokens and board definitions"
                                       " back into Redis")
    board = actions.add_parser(
        "create-board", help="create a board (or replace its actions and maximum)")
    board.add_argument("board")
    board.add_argument("--action", action="append", default=[], metavar="NAME=POINTS",
                       help="an action players can take and its points (repeatable; the "
                            "first is the default; none given: play=1)")
    board.add_argument("--max-points", type=int, default=None,
                       help="largest explicit points of a game backend's increment "
                            "(default MAX_POINTS_PER_INCREMENT)")
    actions.add_parser("boards", help="list the boards, one JSON object a line")


KIND_OF = {"flag": "flagged", "ban": "banned", "shadow-ban": "shadow_banned"}


async def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    from workers.moderation import Moderation, restore_restrictions

    assert settings.redis_url is not None and settings.database_url is not None
    client = redis_asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
    pool = await create_pool(settings.database_url, max_size=2)
    keys = Keys(settings.key_prefix)
    moderation = Moderation(redis=client, pool=pool, scripts=register_scripts(client), keys=keys)
    command = args.admin_command
    service_max = settings.max_points_per_increment
    try:
        if command == "events":
            for row in reversed(await moderation.events(user_id=args.user, limit=args.limit)):
                print(orjson.dumps({k: (str(v) if k == "created_at" else v)
                                    for k, v in dict(row).items()}).decode())
        elif command in KIND_OF:
            ttl = args.hours * 3600 if command == "flag" else None
            await moderation.restrict(args.user_id, KIND_OF[command], reason=args.reason,
                                      ttl_s=ttl)
            print(f"{args.user_id}: {KIND_OF[command]}")
        elif command.startswith("un") and command[2:] in KIND_OF:
            await moderation.lift(args.user_id, KIND_OF[command[2:]], reason=args.reason)
            if command == "unban":  # the appeal path: a fresh start, not one failure from a ban
                await client.delete(keys.token_failures_user(args.user_id))
            print(f"{args.user_id}: {KIND_OF[command[2:]]} lifted")
        elif command == "remove-action":
            totals = await moderation.remove_action(args.event_id, reason=args.reason)
            if not totals:
                print(f"no action {args.event_id!r}")
                return 1
            for total in totals:
                print(f"removed; {total.user_id} now has {total.score} on {total.board}")
        elif command == "restore":
            print(f"restored {await restore_restrictions(client, pool, keys)} keys")
            boards = await publish_boards(pool, client, keys.board_definitions,
                                          service_max=service_max)
            print(f"published {boards} board definitions")
        elif command == "create-board":
            try:
                created = definition(args.board, parse_actions(args.action, max_points=service_max),
                                     args.max_points, service_max=service_max)
            except ValueError as exc:
                print(f"refused: {exc}")
                return 2
            await create_board(pool, client, keys.board_definitions, created)
            print(orjson.dumps({"board": created.board, "actions": dict(created.actions),
                                "max_points": created.max_points}).decode())
        elif command == "boards":
            for name, raw in sorted((await client.hgetall(keys.board_definitions)).items()):
                found = from_json(name, raw)
                print(orjson.dumps({"board": name, "actions": dict(found.actions),
                                    "max_points": found.max_points}).decode())
    finally:
        await pool.close()
        await client.aclose()
    return 0


def main_admin(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(run_admin(args, settings))

"""``scoreboard admin ...``: boards, fraud events, a user's actions, flags, bans,
shadow-bans, removing an action, the review list and undoing an automatic decision.

A command about a user or a board that does not exist says so on stderr and
exits 1: a typo must not look like a ban that worked. Listings print one JSON
object a line, oldest first (the newest is where the terminal's cursor is).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

import orjson

from scoreboard.admin_boards import BOARD_COMMANDS, add_board_parsers, run_board_command
from scoreboard.board_defs import publish_boards
from scoreboard.db import create_pool
from scoreboard.lua import register_scripts
from scoreboard.redis_clients import redis_client
from scoreboard.settings import Settings


def add_admin_parser(commands: Any) -> None:
    admin = commands.add_parser("admin", help="fraud events, a user's actions, moderation",
                                description="fraud events, a user's actions, moderation")
    subcommands = admin.add_subparsers(dest="admin_command", required=True)

    def command(name: str, what: str) -> Any:
        """A subcommand whose own --help says what it does, as the list does."""
        return subcommands.add_parser(name, help=what, description=what)

    events = command("events", "list fraud events, newest last")
    events.add_argument("--user", help="only this user's events")
    events.add_argument("--limit", type=int, default=50, help="the newest this many (50)")
    user_actions = command("actions",
                           "list a user's accepted actions with their event ids, newest last")
    user_actions.add_argument("user_id")
    user_actions.add_argument("--board", help="only this board's actions")
    user_actions.add_argument("--limit", type=int, default=50, help="the newest this many (50)")
    for name, what in [("flag", "hold a user to the flagged limit"),
                       ("ban", "refuse a user's increments and take them off every board"),
                       ("shadow-ban", "take a user off every board without telling them")]:
        restrict = command(name, what)
        restrict.add_argument("user_id")
        restrict.add_argument("--reason", default="manual decision")
        if name == "flag":
            restrict.add_argument("--hours", type=int, default=24)
        lift = command(f"un{name}", f"lift a {name}, recording who and why")
        lift.add_argument("user_id")
        lift.add_argument("--reason", default="manual decision")
        lift.add_argument("--by", default=getpass.getuser(), help="who lifts it (default: you)")
        lift.add_argument("--appeal", action="store_true",
                          help="the automatic decision was wrong: reset the user's ladder")
    listing = command("review", "accounts with automatic evidence (rules fired, anomaly score,"
                                " points, restrictions), newest first")
    listing.add_argument("--hours", type=int, default=24, help="evidence of the last HOURS (24)")
    listing.add_argument("--limit", type=int, default=50, help="this many accounts (50)")
    undoing = command("undo", "undo an automatic flag or ban (a fraud event id from `admin"
                              " events`) on appeal: lifted with who and why, board corrected")
    undoing.add_argument("fraud_event_id", type=int)
    undoing.add_argument("--reason", required=True)
    undoing.add_argument("--by", default=getpass.getuser(), help="who undoes it (default: you)")
    remove = command("remove-action", "delete one action (an event id from `admin actions`);"
                                      " correct the score everywhere")
    remove.add_argument("event_id")
    remove.add_argument("--source", help="the action's source (player, backend:<id>), needed"
                                         " when several sources used the event id")
    remove.add_argument("--reason", default="manual decision")
    command("restore", "put flags, bans, revoked tokens and board definitions back into Redis")
    add_board_parsers(command)


KIND_OF = {"flag": "flagged", "ban": "banned", "shadow-ban": "shadow_banned"}

USER_ACTIONS = """
SELECT event_id, created_at, board, points, source, client_addr, request_id FROM actions
WHERE user_id = $1 AND ($2::text IS NULL OR board = $2)
ORDER BY created_at DESC, event_id DESC LIMIT $3
"""


class UnknownName(Exception):
    """A user or board named on the command line that does not exist."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(kind, name)
        self.kind = kind
        self.name = name

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.name!r}"


async def require_user(pool: Any, user_id: str) -> None:
    if not await pool.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id):
        raise UnknownName("user", user_id)


async def require_board(pool: Any, board: str) -> None:
    """A board exists once created, or once something was scored on it."""
    known = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM boards WHERE board = $1)"
        " OR EXISTS (SELECT 1 FROM scores WHERE board = $1)", board)
    if not known:
        raise UnknownName("board", board)


# The commands that act on an existing user (their ``user_id`` argument).
ON_A_USER = ("actions", *KIND_OF, *(f"un{name}" for name in KIND_OF))


async def require_named(pool: Any, args: argparse.Namespace) -> None:
    """Refuse (:class:`UnknownName`) a user or board named on the command line
    that does not exist, for the commands that read or change one."""
    command = args.admin_command
    if command in ON_A_USER:
        await require_user(pool, args.user_id)
    if command == "events" and args.user is not None:
        await require_user(pool, args.user)
    if command == "actions" and args.board is not None:
        await require_board(pool, args.board)


def _print_rows(rows: list[Any]) -> None:
    for row in reversed(rows):
        print(orjson.dumps({k: (str(v) if k == "created_at" else v)
                            for k, v in dict(row).items()}).decode())


async def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    from scoreboard.moderation import AmbiguousAction, Moderation, restore_restrictions
    from scoreboard.review import NotUndoable, review, undo

    assert settings.redis_url is not None and settings.database_url is not None
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster,
                          decode_responses=True)
    pool = await create_pool(settings.database_url, max_size=2)
    keys = settings.keys
    moderation = Moderation(redis=client, pool=pool, scripts=register_scripts(client), keys=keys)
    command = args.admin_command
    service_max = settings.max_points_per_increment
    try:
        await require_named(pool, args)
        if command == "events":
            _print_rows(await moderation.events(user_id=args.user, limit=args.limit))
        elif command == "actions":
            _print_rows(await pool.fetch(USER_ACTIONS, args.user_id, args.board, args.limit))
        elif command in KIND_OF:
            ttl = args.hours * 3600 if command == "flag" else None
            await moderation.restrict(args.user_id, KIND_OF[command], reason=args.reason,
                                      ttl_s=ttl)
            print(f"{args.user_id}: {KIND_OF[command]}")
        elif command.startswith("un") and command[2:] in KIND_OF:
            await moderation.lift(args.user_id, KIND_OF[command[2:]], reason=args.reason,
                                  by=args.by, appeal=args.appeal)
            if command == "unban":  # the appeal path: a fresh start, not one failure from a ban
                await client.delete(keys.token_failures_user(args.user_id))
            print(f"{args.user_id}: {KIND_OF[command[2:]]} lifted")
        elif command == "review":
            for account in await review(pool, hours=args.hours, limit=args.limit):
                print(orjson.dumps(account).decode())
        elif command == "undo":
            try:
                print(orjson.dumps(await undo(moderation, args.fraud_event_id, by=args.by,
                                              reason=args.reason)).decode())
            except NotUndoable as exc:
                print(exc, file=sys.stderr)
                return 1
        elif command == "remove-action":
            try:
                totals = await moderation.remove_action(args.event_id, reason=args.reason,
                                                        source=args.source)
            except AmbiguousAction as exc:
                print(exc, file=sys.stderr)
                return 1
            if not totals:
                print(f"no action {args.event_id!r} (see: scoreboard admin actions USER)",
                      file=sys.stderr)
                return 1
            for total in totals:
                print(f"removed; {total.user_id} now has {total.score} on {total.board}")
        elif command == "restore":
            print(f"restored {await restore_restrictions(client, pool, keys)} keys")
            boards = await publish_boards(pool, client, keys.board_definitions,
                                          service_max=service_max)
            print(f"published {boards} board definitions")
        elif command in BOARD_COMMANDS:
            return await run_board_command(args, pool=pool, client=client,
                                           definitions_key=keys.board_definitions,
                                           service_max=service_max)
    except UnknownName as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        await pool.close()
        await client.aclose()
    return 0


def main_admin(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(run_admin(args, settings))

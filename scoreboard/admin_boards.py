"""``scoreboard admin create-board / change-board / close-board / open-board / boards``.

A board's whole definition (``scoreboard.board_defs``) is written to Postgres,
then to the Redis copy that ingest and workers read (they pick a change up
within ``BOARD_REFRESH_S``). ``change-board`` changes only the options given.
A definition that does not check out is refused (exit 2) and nothing is
written; a board that does not exist is exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from scoreboard.board_defs import (
    BoardDefinition,
    create_board,
    definition,
    from_json,
    load_board,
    parse_actions,
    seasons_json,
)
from scoreboard.windows import OPERATORS, WindowSpec, check_spec, iso, parse_season

BOARD_COMMANDS = ("create-board", "change-board", "close-board", "open-board", "boards")


def _definition_options(parser: Any, *, changing: bool) -> None:
    unless = " (default: unchanged)" if changing else ""
    parser.add_argument("board")
    parser.add_argument("--action", action="append", default=[], metavar="NAME=POINTS",
                        help="an action players can take and its points (repeatable; the "
                             "first is the default" + (unless or "; none given: play=1") + ")")
    parser.add_argument("--max-points", type=int, default=None,
                        help="largest explicit points of a game backend's increment "
                             "(default " + ("unchanged" if changing else
                                            "MAX_POINTS_PER_INCREMENT") + ")")
    parser.add_argument("--title", default=None, help="the board's title" + unless)
    parser.add_argument("--window", action="append", default=[],
                        choices=("all_time", "daily", "weekly", "monthly", "season"),
                        help="a window the board counts in (repeatable" +
                             ("; default: unchanged)" if changing else "; default: all_time)"))
    parser.add_argument("--timezone", default=None,
                        help="IANA timezone its windows turn over in" + (unless or " (UTC)"))
    parser.add_argument("--turnover-hour", type=int, default=None,
                        help="local hour (0-23) its windows turn over at" + (unless or " (0)"))
    parser.add_argument("--season", action="append", default=[], metavar="NAME=START/END",
                        help="a named season, ISO 8601 times (repeatable; adds the season "
                             "window" + ("; replaces the seasons" if changing else "") + ")")
    parser.add_argument("--operator", choices=OPERATORS, default=None,
                        help="sum: points add up; best: a player's best single result counts"
                             + (unless or " (sum)"))


def add_board_parsers(command: Callable[[str, str], Any]) -> None:
    _definition_options(command("create-board", "create a board (or replace its whole "
                                                "definition)"), changing=False)
    change = command("change-board", "change the options given of an existing board")
    _definition_options(change, changing=True)
    for name, what in [("close-board", "close a board: increments refused, boards readable"),
                       ("open-board", "open a closed board again")]:
        command(name, what).add_argument("board")
    command("boards", "list the boards ingest knows, one JSON object a line")


def _changed(current: BoardDefinition | None, args: argparse.Namespace,
             service_max: int) -> BoardDefinition:
    """The definition ``args`` ask for (``current``: change-board's starting point)."""
    base = current or definition(args.board, parse_actions([], max_points=service_max), None,
                                 service_max=service_max)
    actions = (parse_actions(args.action, max_points=service_max) if args.action
               else base.actions)
    seasons = tuple(parse_season(s) for s in args.season) if args.season else base.spec.seasons
    windows = tuple(args.window) or base.spec.windows
    if args.season and "season" not in windows:
        windows = (*windows, "season")
    spec = check_spec(windows,
                      base.spec.timezone if args.timezone is None else args.timezone,
                      (base.spec.turnover_hour if args.turnover_hour is None
                       else args.turnover_hour), seasons)
    max_points = base.max_points if args.max_points is None else args.max_points
    return definition(args.board, actions, max_points, service_max=service_max,
                      title=base.title if args.title is None else args.title, spec=spec,
                      operator=args.operator or base.operator, is_open=base.is_open)


def describe(found: BoardDefinition, now: datetime | None = None) -> dict[str, Any]:
    """A board as the admin listing and ``GET /api/boards/{id}`` show it: with each
    window's current period and when it resets."""
    moment = now or datetime.now(UTC)
    return {"board": found.board, "title": found.title, "actions": dict(found.actions),
            "max_points": found.max_points, "operator": found.operator, "open": found.is_open,
            "timezone": found.spec.timezone, "turnover_hour": found.spec.turnover_hour,
            "seasons": seasons_json(found.spec.seasons),
            "windows": [window_json(found.spec, w, moment) for w in found.spec.windows]}


def window_json(spec: WindowSpec, window: str, moment: datetime) -> dict[str, Any]:
    current = spec.period_at(window, moment)
    reset = spec.next_reset_at(window, moment)
    return {"window": window, "current": None if current is None else current.as_json(),
            "next_reset_at": None if reset is None else iso(reset)}


async def run_board_command(args: argparse.Namespace, *, pool: Any, client: Any,
                            definitions_key: str, service_max: int) -> int:
    """Run one of :data:`BOARD_COMMANDS`; returns the exit status."""
    command = args.admin_command
    if command == "boards":
        for name, raw in sorted((await client.hgetall(definitions_key)).items()):
            print(orjson.dumps(describe(from_json(name, raw))).decode())
        return 0
    current = await load_board(pool, args.board, service_max=service_max)
    if command != "create-board" and current is None:
        print(f"unknown board {args.board!r}")
        return 1
    try:
        if command in ("close-board", "open-board"):
            assert current is not None
            wanted = dataclasses.replace(current, is_open=command == "open-board")
        else:
            wanted = _changed(current if command == "change-board" else None, args,
                              service_max)
    except ValueError as exc:
        print(f"refused: {exc}")
        return 2
    await create_board(pool, client, definitions_key, wanted)
    print(orjson.dumps(describe(wanted)).decode())
    return 0

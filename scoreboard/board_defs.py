"""Board definitions: which boards exist, their actions (name -> points), and the
largest explicit ``points`` a game backend may send to each.

Postgres ``boards`` is the record (``sql/004_board_actions.sql``); Redis holds a
copy in one HASH (``Keys.board_definitions``: board -> JSON) so that ingest never
reads Postgres on a request. The copy is written by :func:`create_board` (the
``scoreboard admin create-board`` command) and by :func:`publish_boards`, which
ingest runs at start (so boards made by a migration, or a Redis that lost its
data, are in Redis before the first request) and ``scoreboard admin restore``
runs on demand.

The parsing and validation here are pure; the two I/O functions take their
clients as arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from scoreboard.names import BOARD_PATTERN, BOARD_RULE

ACTION_PATTERN = re.compile(r"[a-z0-9_.-]{1,32}")
ACTION_RULE = "must be 1 to 32 lowercase letters, digits, '_', '.' or '-'"
MAX_ACTIONS = 64
DEFAULT_ACTIONS: tuple[tuple[str, int], ...] = (("play", 1),)


@dataclass(frozen=True)
class BoardDefinition:
    """One board. ``actions`` keeps its order: the first is the default action."""

    board: str
    actions: tuple[tuple[str, int], ...]
    max_points: int  # largest explicit points of a game backend's increment

    @property
    def default_action(self) -> str:
        return self.actions[0][0]

    def points_of(self, action: str) -> int | None:
        for name, points in self.actions:
            if name == action:
                return points
        return None

    def to_json(self) -> bytes:
        return orjson.dumps({"actions": [[n, p] for n, p in self.actions],
                             "max_points": self.max_points})


def from_json(board: str, raw: bytes | str) -> BoardDefinition:
    """The definition stored in Redis for ``board`` (written by :meth:`to_json`)."""
    data = orjson.loads(raw)
    return BoardDefinition(board=board, actions=tuple((str(n), int(p)) for n, p in data["actions"]),
                           max_points=int(data["max_points"]))


def parse_actions(specs: Sequence[str], *, max_points: int) -> tuple[tuple[str, int], ...]:
    """``["play=1", "win=10"]`` to ordered pairs; ``ValueError`` says what is wrong."""
    actions: list[tuple[str, int]] = []
    for spec in specs:
        name, sep, points_text = spec.partition("=")
        if not sep or not ACTION_PATTERN.fullmatch(name):
            raise ValueError(f"{spec!r}: an action is NAME=POINTS, NAME {ACTION_RULE}")
        if not points_text.isdigit() or not 1 <= int(points_text) <= max_points:
            raise ValueError(f"{spec!r}: points must be an integer from 1 to {max_points}")
        if any(existing == name for existing, _ in actions):
            raise ValueError(f"{spec!r}: action {name!r} is listed twice")
        actions.append((name, int(points_text)))
    if not actions:
        return DEFAULT_ACTIONS
    if len(actions) > MAX_ACTIONS:
        raise ValueError(f"a board has at most {MAX_ACTIONS} actions")
    return tuple(actions)


def definition(board: str, actions: Sequence[tuple[str, int]], max_points: int | None, *,
               service_max: int) -> BoardDefinition:
    """A checked definition; ``max_points`` None means the service-wide maximum."""
    if not BOARD_PATTERN.fullmatch(board):
        raise ValueError(f"board {board!r} {BOARD_RULE}")
    ceiling = service_max if max_points is None else max_points
    if not 1 <= ceiling <= service_max:
        raise ValueError(f"max points must be from 1 to {service_max}")
    return BoardDefinition(board=board, actions=tuple(actions), max_points=ceiling)


def _row_definition(row: Mapping[str, Any], service_max: int) -> BoardDefinition:
    actions = row["actions"]
    if isinstance(actions, str):
        actions = orjson.loads(actions)
    return BoardDefinition(board=row["board"],
                           actions=tuple((a["name"], int(a["points"])) for a in actions),
                           max_points=min(row["max_points_per_action"] or service_max,
                                          service_max))


async def publish_boards(pool: Any, redis: Any, definitions_key: str, *,
                         service_max: int) -> int:
    """Copy every board of Postgres into the Redis HASH; returns how many."""
    rows = await pool.fetch("SELECT board, actions, max_points_per_action FROM boards",
                            timeout=10)
    found = {row["board"]: _row_definition(row, service_max).to_json() for row in rows}
    if found:
        await redis.hset(definitions_key, mapping=found)
    return len(found)


async def create_board(pool: Any, redis: Any, definitions_key: str,
                       board: BoardDefinition) -> None:
    """Create ``board`` or replace its actions and maximum, in Postgres then Redis.
    ``pool`` is one of :func:`scoreboard.db.create_pool` (its jsonb codec encodes)."""
    await pool.execute(
        "INSERT INTO boards (board, actions, max_points_per_action) VALUES ($1, $2::jsonb, $3)"
        " ON CONFLICT (board) DO UPDATE SET actions = EXCLUDED.actions,"
        " max_points_per_action = EXCLUDED.max_points_per_action",
        board.board, [{"name": n, "points": p} for n, p in board.actions],
        board.max_points, timeout=10)
    await redis.hset(definitions_key, board.board, board.to_json())

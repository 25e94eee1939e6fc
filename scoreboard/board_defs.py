"""Board definitions: which boards exist, their actions (name -> points), the
largest explicit ``points`` a game backend may send to each, and (migration 008)
their title, windows, timezone and turnover hour, seasons, operator and whether
they are open (period math: ``scoreboard.windows``).

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
from scoreboard.windows import ALL_TIME, OPERATORS, Season, WindowSpec, iso, parse_instant

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
    title: str = ""
    spec: WindowSpec = WindowSpec()
    operator: str = "sum"  # or "best": a player's best single result counts
    is_open: bool = True  # a closed board refuses increments; it stays readable

    @property
    def plain(self) -> bool:
        """Only the all_time window, summed: the worker writes it as before windows."""
        return self.spec.only_all_time and self.operator == "sum"

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
                             "max_points": self.max_points, "title": self.title,
                             "windows": list(self.spec.windows), "timezone": self.spec.timezone,
                             "turnover_hour": self.spec.turnover_hour,
                             "seasons": seasons_json(self.spec.seasons),
                             "operator": self.operator, "open": self.is_open})


def seasons_json(seasons: Sequence[Season]) -> list[dict[str, str]]:
    return [{"name": s.name, "starts_at": iso(s.starts_at), "ends_at": iso(s.ends_at)}
            for s in seasons]


def seasons_from(raw: Sequence[Mapping[str, str]]) -> tuple[Season, ...]:
    return tuple(Season(name=s["name"], starts_at=parse_instant(s["starts_at"]),
                        ends_at=parse_instant(s["ends_at"])) for s in raw)


def from_json(board: str, raw: bytes | str) -> BoardDefinition:
    """The definition stored in Redis for ``board`` (written by :meth:`to_json`; a
    copy written before migration 008 reads as an open all_time ``sum`` board)."""
    data = orjson.loads(raw)
    spec = WindowSpec(windows=tuple(data.get("windows", (ALL_TIME,))),
                      timezone=data.get("timezone", "UTC"),
                      turnover_hour=int(data.get("turnover_hour", 0)),
                      seasons=seasons_from(data.get("seasons", ())))
    return BoardDefinition(board=board, actions=tuple((str(n), int(p)) for n, p in data["actions"]),
                           max_points=int(data["max_points"]), title=data.get("title", ""),
                           spec=spec, operator=data.get("operator", "sum"),
                           is_open=bool(data.get("open", True)))


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
               service_max: int, title: str = "", spec: WindowSpec | None = None,
               operator: str = "sum", is_open: bool = True) -> BoardDefinition:
    """A checked definition; ``max_points`` None means the service-wide maximum.
    ``spec`` comes checked from :func:`scoreboard.windows.check_spec`."""
    if not BOARD_PATTERN.fullmatch(board):
        raise ValueError(f"board {board!r} {BOARD_RULE}")
    ceiling = service_max if max_points is None else max_points
    if not 1 <= ceiling <= service_max:
        raise ValueError(f"max points must be from 1 to {service_max}")
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {', '.join(OPERATORS)}")
    if len(title) > 200:
        raise ValueError("a title is at most 200 characters")
    return BoardDefinition(board=board, actions=tuple(actions), max_points=ceiling, title=title,
                           spec=spec or WindowSpec(), operator=operator, is_open=is_open)


def row_definition(row: Mapping[str, Any], service_max: int) -> BoardDefinition:
    actions = row["actions"]
    if isinstance(actions, str):
        actions = orjson.loads(actions)
    seasons = row["seasons"]
    if isinstance(seasons, str):
        seasons = orjson.loads(seasons)
    spec = WindowSpec(windows=tuple(row["windows"]), timezone=row["timezone"],
                      turnover_hour=row["turnover_hour"], seasons=seasons_from(seasons))
    return BoardDefinition(board=row["board"],
                           actions=tuple((a["name"], int(a["points"])) for a in actions),
                           max_points=min(row["max_points_per_action"] or service_max,
                                          service_max),
                           title=row["title"] or "", spec=spec, operator=row["operator"],
                           is_open=row["is_open"])


SELECT_BOARDS = """
SELECT board, actions, max_points_per_action, title, windows, timezone, turnover_hour, seasons,
       operator, is_open
FROM boards"""


async def load_board(pool: Any, board: str, *, service_max: int) -> BoardDefinition | None:
    """One board's definition from Postgres (the record), or None."""
    row = await pool.fetchrow(SELECT_BOARDS + " WHERE board = $1", board, timeout=10)
    return None if row is None else row_definition(row, service_max)


async def publish_boards(pool: Any, redis: Any, definitions_key: str, *,
                         service_max: int) -> int:
    """Copy every board of Postgres into the Redis HASH; returns how many."""
    rows = await pool.fetch(SELECT_BOARDS, timeout=10)
    found = {row["board"]: row_definition(row, service_max).to_json() for row in rows}
    if found:
        await redis.hset(definitions_key, mapping=found)
    return len(found)


async def create_board(pool: Any, redis: Any, definitions_key: str,
                       board: BoardDefinition) -> None:
    """Create ``board`` or replace its whole definition, in Postgres then Redis.
    ``pool`` is one of :func:`scoreboard.db.create_pool` (its jsonb codec encodes)."""
    await pool.execute(
        "INSERT INTO boards (board, actions, max_points_per_action, title, windows, timezone,"
        " turnover_hour, seasons, operator, is_open, closed_at)"
        " VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8::jsonb, $9, $10,"
        "         CASE WHEN $10 THEN NULL ELSE now() END)"
        " ON CONFLICT (board) DO UPDATE SET actions = EXCLUDED.actions,"
        " max_points_per_action = EXCLUDED.max_points_per_action, title = EXCLUDED.title,"
        " windows = EXCLUDED.windows, timezone = EXCLUDED.timezone,"
        " turnover_hour = EXCLUDED.turnover_hour, seasons = EXCLUDED.seasons,"
        " operator = EXCLUDED.operator, is_open = EXCLUDED.is_open,"
        " closed_at = CASE WHEN EXCLUDED.is_open THEN NULL"
        "                  ELSE COALESCE(boards.closed_at, now()) END",
        board.board, [{"name": n, "points": p} for n, p in board.actions],
        board.max_points, board.title or None, list(board.spec.windows), board.spec.timezone,
        board.spec.turnover_hour, seasons_json(board.spec.seasons), board.operator,
        board.is_open, timeout=10)
    await redis.hset(definitions_key, board.board, board.to_json())


class DefinitionCache:
    """Board definitions for a process that must not look them up per item (the
    worker): the whole HASH every ``refresh_s``, and a board not seen yet looked up
    at once (HMGET of just those; a name Redis does not know is remembered as
    unknown until the next full read)."""

    def __init__(self, redis: Any, definitions_key: str, *, refresh_s: float) -> None:
        self.redis = redis
        self.key = definitions_key
        self.refresh_s = refresh_s
        self.known: dict[str, BoardDefinition] = {}
        self.missing: set[str] = set()
        self.read_at = float("-inf")

    async def for_boards(self, boards: set[str]) -> Mapping[str, BoardDefinition]:
        import time

        now = time.monotonic()
        if now - self.read_at >= self.refresh_s:
            raw = await self.redis.hgetall(self.key)
            self.known = {_text(b): from_json(_text(b), v) for b, v in raw.items()}
            self.missing = set()
            self.read_at = now
        unknown = sorted(boards - self.known.keys() - self.missing)
        if unknown:
            for board, value in zip(unknown, await self.redis.hmget(self.key, unknown),
                                    strict=True):
                if value is None:
                    self.missing.add(board)
                else:
                    self.known[board] = from_json(board, value)
        return self.known


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Reading boards: top, one user's rank, around a user, pages, ranks of a list.

The logic is written once over a small source interface, implemented twice:
over Redis (``scoreboard.boards_redis``, the normal path) and over Postgres
(``scoreboard.boards_postgres``, when Redis is unreachable). Both give the same
order (scoreboard/ranking.py) and so the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from scoreboard.ranking import Entry, decode_member, encode_cursor, ranks


@dataclass(frozen=True)
class Row:
    total: int
    member: str  # "<reached ms>|<user id>"
    username: str

    @property
    def user_id(self) -> str:
        return decode_member(self.member)[1]


@dataclass(frozen=True)
class Slice:
    """Consecutive rows from 0-based ``start``, read consistently."""

    version: int | None  # the board's revision; None when read from Postgres
    size: int
    start: int
    higher_than_first: int  # entries with a strictly higher total than rows[0]
    rows: list[Row]


class BoardSource(Protocol):
    async def slice(self, board: str, start: int, count: int) -> Slice: ...

    async def position(self, board: str, user_id: str) -> int | None: ...

    async def position_after(self, board: str, total: int, member: str) -> int:
        """Position of the first entry after ``(total, member)`` in the order, whether
        or not that entry is still on the board."""
        ...


@dataclass(frozen=True)
class Page:
    board: str
    version: int | None
    size: int
    entries: list[Entry]
    next_cursor: str | None

    def as_json(self) -> dict[str, object]:
        return {"board": self.board, "version": self.version, "size": self.size,
                "entries": [e.as_json() for e in self.entries], "next_cursor": self.next_cursor}


class BoardReader:
    def __init__(self, source: BoardSource, *, rank_mode: str) -> None:
        self.source = source
        self.rank_mode = rank_mode

    def _page(self, board: str, piece: Slice, *, with_cursor: bool = True) -> Page:
        totals = [row.total for row in piece.rows]
        rank_list = ranks(totals, first_position=piece.start,
                          first_competition_rank=piece.higher_than_first + 1,
                          mode=self.rank_mode)
        entries = [Entry(rank=rank, user_id=row.user_id, username=row.username, score=row.total)
                   for rank, row in zip(rank_list, piece.rows, strict=True)]
        cursor = None
        if with_cursor and piece.rows and piece.start + len(piece.rows) < piece.size:
            cursor = encode_cursor(piece.rows[-1].total, piece.rows[-1].member)
        return Page(board=board, version=piece.version, size=piece.size, entries=entries,
                    next_cursor=cursor)

    async def top(self, board: str, limit: int) -> Page:
        return self._page(board, await self.source.slice(board, 0, limit))

    async def after(self, board: str, cursor: tuple[int, str], limit: int) -> Page:
        """The page following a cursor. Entries that move meanwhile are neither
        repeated nor skipped unless they move across the cursor itself."""
        start = await self.source.position_after(board, *cursor)
        return self._page(board, await self.source.slice(board, start, limit))

    async def user(self, board: str, user_id: str) -> Page | None:
        position = await self.source.position(board, user_id)
        if position is None:
            return None
        return self._page(board, await self.source.slice(board, position, 1), with_cursor=False)

    async def around(self, board: str, user_id: str, radius: int) -> Page | None:
        position = await self.source.position(board, user_id)
        if position is None:
            return None
        start = max(0, position - radius)
        piece = await self.source.slice(board, start, position - start + radius + 1)
        return self._page(board, piece, with_cursor=False)

    async def as_if_present(self, board: str, row: Row, radius: int) -> Page:
        """The entries around ``row`` as if it were on the board, ranks included.

        A shadow-banned player is off the board for everyone else but must see
        their own place as before: ``row`` (their committed total) is placed
        where the board's order puts it, among the real entries around it."""
        position = await self.source.position_after(board, row.total, row.member)
        start = max(0, position - radius)
        piece = await self.source.slice(board, start, position - start + radius)
        before = piece.rows[:position - start]
        rows = [*before, row, *piece.rows[len(before):]]
        if before:
            higher = piece.higher_than_first
        else:
            higher = await self._higher_than(board, row.total, position)
        return self._page(board, Slice(version=piece.version, size=piece.size + 1, start=start,
                                       higher_than_first=higher, rows=rows), with_cursor=False)

    async def _higher_than(self, board: str, total: int, position: int) -> int:
        """How many entries have a strictly higher total than ``total``, which
        would stand at ``position``: read from the entry just before it."""
        if position == 0:
            return 0
        previous = await self.source.slice(board, position - 1, 1)
        if not previous.rows or previous.rows[0].total > total:
            return position
        return previous.higher_than_first

    async def ranks_of(self, board: str, user_ids: list[str]) -> Page:
        """Entries of the listed users that are on the board, in board order."""
        found: list[tuple[int, Entry]] = []
        version, size = None, 0
        for user_id in dict.fromkeys(user_ids):
            page = await self.user(board, user_id)
            if page is not None and page.entries:
                found.append((page.entries[0].rank, page.entries[0]))
                version, size = page.version, page.size
        ordered = [entry for _, entry in sorted(found, key=lambda pair: pair[0])]
        return Page(board=board, version=version, size=size, entries=ordered, next_cursor=None)

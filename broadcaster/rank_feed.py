"""The personal rank feed: where one watched player stands, and who passed them. Pure.

A watched player's *standing* is their rank and score and the entries right
above and below them, read in one script call (``lua/watch_ranks.lua``) for
every watched player of a board at once. A ``rank`` message goes out when the
standing differs from the last one sent; it is encoded once per player and
tick (``RankUpdate``) and the same bytes go to every spectator watching that
player, as with snapshots.

``overtaken`` names a player who passed the watched one. The broadcaster only
sees each tick's neighbours, so it is sent when the player now right above was
right below at the previous tick, or when the watched player lost places and
the one right above them is new there (they came from below or from off the
board). Someone who passes and lands higher up, beyond the neighbour, shows as
a worse rank in the ``rank`` message, without an ``overtaken``.

A player who is not on the board (never scored here, banned, shadow-banned:
exactly the players ``GET /api/scores/users/{id}`` answers 404 for) stands at
rank ``null`` with no neighbours, and the feed goes on: they show up when they
are back on the board.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from broadcaster.frames import named, sse_event, text_frame
from scoreboard.script_calls import WatchedPlayer, WatchedRow


@dataclass(frozen=True)
class Neighbour:
    rank: int
    user_id: str
    username: str
    score: int

    def as_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "user_id": self.user_id, "username": self.username,
                "score": self.score}


@dataclass(frozen=True)
class Standing:
    """Where a player stands; ``position`` (0-based) is None off the board."""

    user_id: str
    username: str | None
    position: int | None
    rank: int | None
    score: int | None
    above: Neighbour | None
    below: Neighbour | None

    def same_as(self, other: Standing | None) -> bool:
        """Whether a spectator would see nothing new (the position alone is internal)."""
        return other is not None and (self.rank, self.score, self.above, self.below) == (
            other.rank, other.score, other.above, other.below)


def _neighbour(row: WatchedRow, position: int, ordinal: bool) -> Neighbour:
    return Neighbour(position + 1 if ordinal else row.higher + 1, row.user_id, row.username,
                     row.total)


def standing_of(user_id: str, player: WatchedPlayer, rank_mode: str) -> Standing:
    """The standing of ``user_id`` from its reply of ``watch_ranks``."""
    position, rows = player.position, player.rows
    if position is None or not rows:
        return Standing(user_id, None, None, None, None, None, None)
    ordinal = rank_mode == "ordinal"
    own_index = 1 if position > 0 else 0
    own = _neighbour(rows[own_index], position, ordinal)
    above = _neighbour(rows[0], position - 1, ordinal) if own_index else None
    below = (_neighbour(rows[own_index + 1], position + 1, ordinal)
             if len(rows) > own_index + 1 else None)
    return Standing(user_id, own.username, position, own.rank, own.score, above, below)


def overtaker(previous: Standing | None, current: Standing) -> Neighbour | None:
    """Who passed the watched player between two standings, if the neighbours tell."""
    if previous is None or previous.position is None or current.position is None:
        return None
    above = current.above
    if above is None:
        return None
    if previous.below is not None and previous.below.user_id == above.user_id:
        return above
    new_above = previous.above is None or previous.above.user_id != above.user_id
    if current.position > previous.position and new_above:
        return above
    return None


@dataclass(frozen=True)
class RankUpdate:
    """One standing of one watched player, in every wire form, encoded once."""

    board: str
    version: int  # the board's revision it was read at
    standing: Standing
    ws_bytes: bytes  # the rank frame, then the overtaken frame if any
    sse_bytes: bytes
    messages: tuple[bytes, ...]  # the JSON payloads, in order

    @classmethod
    def build(cls, board: str, version: int, standing: Standing,
              passed_by: Neighbour | None = None) -> RankUpdate:
        """``board`` is what the service keys watched players by: a board, or a window's
        period (its scope), sent as board, window and period like a snapshot's."""
        ts = int(time.time() * 1000)
        where = named(board)
        payloads = [orjson.dumps({
            "type": "rank", **where, "version": version, "ts": ts,
            "user_id": standing.user_id, "username": standing.username, "rank": standing.rank,
            "score": standing.score,
            "above": standing.above.as_json() if standing.above else None,
            "below": standing.below.as_json() if standing.below else None})]
        events = [sse_event(payloads[0], "rank")]
        if passed_by is not None:
            payloads.append(orjson.dumps({
                "type": "overtaken", **where, "version": version, "ts": ts,
                "user_id": standing.user_id, "rank": standing.rank, "by": passed_by.as_json()}))
            events.append(sse_event(payloads[1], "overtaken"))
        return cls(board, version, standing, b"".join(text_frame(p) for p in payloads),
                   b"".join(events), tuple(payloads))

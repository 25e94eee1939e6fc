"""The rank feed's pure parts: standings from a script reply, who overtook whom,
the encodings, and the parsing of watch requests. No server."""

from __future__ import annotations

import orjson

from broadcaster.admission import Refusal
from broadcaster.rank_feed import Neighbour, RankUpdate, Standing, overtaker, standing_of
from broadcaster.watch_requests import (
    WatchRequest,
    parse_watch,
    unwatched_frame,
    watches_of,
)
from scoreboard.script_calls import WatchedPlayer, WatchedRow


def row(user_id: str, total: int, higher: int) -> WatchedRow:
    return WatchedRow(user_id, total, user_id.title(), higher)


def standing(position: int | None, above: str | None = None, below: str | None = None
             ) -> Standing:
    def n(user_id: str | None, rank: int) -> Neighbour | None:
        return None if user_id is None else Neighbour(rank, user_id, user_id, 1)

    rank = None if position is None else position + 1
    return Standing("me", "me", position, rank, 1, n(above, position or 0),
                    n(below, (position or 0) + 2))


def test_standing_in_the_middle_at_the_top_and_off_the_board() -> None:
    middle = WatchedPlayer(True, 4, [row("a", 50, 3), row("me", 40, 4), row("b", 40, 4)])
    got = standing_of("me", middle, "competition")
    assert (got.rank, got.score, got.username) == (5, 40, "Me")
    assert got.above == Neighbour(4, "a", "A", 50)
    assert got.below == Neighbour(5, "b", "B", 40)  # tied: the same competition rank
    assert standing_of("me", middle, "ordinal").below == Neighbour(6, "b", "B", 40)
    top = standing_of("me", WatchedPlayer(True, 0, [row("me", 9, 0), row("b", 3, 1)]),
                      "competition")
    assert (top.rank, top.above, top.below) == (1, None, Neighbour(2, "b", "B", 3))
    gone = standing_of("me", WatchedPlayer(True, None, []), "competition")
    assert (gone.rank, gone.score, gone.above, gone.below) == (None, None, None, None)


def test_who_overtook() -> None:
    before = standing(3, above="x", below="y")
    assert overtaker(before, standing(4, above="y", below="z")).user_id == "y"  # type: ignore
    # someone from further below (or new) lands right above
    assert overtaker(before, standing(4, above="new", below="y")).user_id == "new"  # type: ignore
    # the neighbour above was passed by someone else: the watched player did not move
    assert overtaker(before, standing(3, above="w", below="y")) is None
    # passed by someone who landed higher up: the neighbours do not say who
    assert overtaker(before, standing(4, above="x", below="y")) is None
    # climbing, staying, first sight, leaving the board
    assert overtaker(before, standing(2, above="q", below="x")) is None
    assert overtaker(None, standing(3, above="x")) is None
    assert overtaker(before, standing(None)) is None
    assert overtaker(standing(None), standing(3, above="x")) is None


def test_an_update_is_encoded_once_for_both_transports() -> None:
    current = standing(4, above="y", below="z")
    update = RankUpdate.build("arena", 7, current, current.above)
    rank, passed = (orjson.loads(m) for m in update.messages)
    assert rank["type"] == "rank" and rank["rank"] == 5 and rank["version"] == 7
    assert passed == {"type": "overtaken", "board": "arena", "version": 7, "ts": rank["ts"],
                      "user_id": "me", "rank": 5, "by": rank["above"]}
    assert update.ws_bytes.count(b'"type":"') == 2
    assert update.sse_bytes.startswith(b"event: rank\ndata: ")
    assert b"\n\nevent: overtaken\ndata: " in update.sse_bytes
    assert not standing(4, above="y").same_as(standing(4, above="z"))
    assert standing(4, above="y").same_as(standing(4, above="y"))


def test_updates_of_a_window_period_name_board_window_and_period_as_snapshots_do() -> None:
    current = standing(4, above="y", below="z")
    update = RankUpdate.build("arena/weekly/2026-W49", 7, current, current.above)
    for message in (orjson.loads(m) for m in update.messages):
        assert (message["board"], message["window"], message["period"]) == (
            "arena", "weekly", "2026-W49")
    assert update.board == "arena/weekly/2026-W49"  # what the service keys players by
    all_time = orjson.loads(RankUpdate.build("arena", 7, current).messages[0])
    assert all_time["board"] == "arena" and "window" not in all_time
    unwatched = orjson.loads(unwatched_frame("arena/weekly/2026-W49", "me")[2:])
    assert unwatched == {"type": "unwatched", "board": "arena", "window": "weekly",
                         "period": "2026-W49", "user_id": "me"}


def test_watch_requests_and_their_refusals() -> None:
    assert parse_watch(b'{"type": "watch", "user_id": "p-1"}') == WatchRequest("watch", "p-1")
    assert parse_watch(b'{"type": "unwatch", "user_id": "p-1"}') == WatchRequest("unwatch",
                                                                                "p-1")
    for other in (b'{"type": "subscribe", "board": "x"}', b"[1]", b"not json"):
        assert parse_watch(other) is None
    for bad in (b'{"type": "watch"}', b'{"type": "watch", "user_id": ""}',
                b'{"type": "watch", "user_id": "a b"}', b'{"type": "unwatch", "user_id": 1}'):
        refusal = parse_watch(bad)
        assert isinstance(refusal, Refusal) and refusal.code == "invalid_field"
    assert watches_of("board=x&watch=a&watch=b&watch=a", 2) == ["a", "b"]
    assert watches_of("board=x", 2) == []
    capped = watches_of("watch=a&watch=b&watch=c", 2)
    assert isinstance(capped, Refusal) and capped.code == "too_many_watches"
    malformed = watches_of("watch=a%20b", 2)
    assert isinstance(malformed, Refusal) and malformed.code == "invalid_field"

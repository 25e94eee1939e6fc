"""The rules that catch, within an hour, the cheaters the simulator's hour run let
through (issue 14, second part), against real Redis and Postgres through the
worker's per-batch checks: a timer whose ticks the rate limiter sometimes
refuses (cadence regularity over whole periods) and a bot that claims the
board's top action every time (top action). Each fires on its pattern and stays
quiet on the honest pattern next to it; docs/fraud.md describes them."""

from __future__ import annotations

import secrets

from scoreboard.keys import Keys
from scoreboard.stream_entry import StreamEntry
from tests.conftest import new_address
from tests.servers import Backing, SyncRedis, create_board, fresh_name
from tests.test_fraud import events_of
from tests.test_fraud_extra import NOON_MS, check_batches, decisions_of, play


def accept(user_id: str, ts_ms: int, board: str, points: int) -> StreamEntry:
    return StreamEntry(stream_id="0-1", event_id="at-" + secrets.token_hex(8), user_id=user_id,
                       username=user_id, board=board, points=points, source="player",
                       ts_ms=ts_ms, ip=new_address(), request_id="")


def test_a_timer_whose_ticks_the_limiter_refused_is_a_cadence_a_human_is_not(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    """Defaults: CADENCE_MAX_MULTIPLE=3. A bot ticking every 10.5 s against a limit
    of one every 12 s gets gaps of 10.5 and 21 s (a plain CV near 0.3): still a
    timer. A human at 20-60 s whose gaps happen to be near multiples is not."""
    bot, casual = fresh_name("ticker"), fresh_name("casual")
    ticks = [0, 1, 3, 4, 6, 7, 8, 10, 11]
    bot_times = [NOON_MS + t * 10_500 + (t * 7) % 9 for t in ticks]
    gaps_s = [21.3, 40.1, 22.0, 63.0, 20.4, 41.9, 44.0, 25.1]
    human_times = [NOON_MS + int(sum(gaps_s[:i]) * 1000) for i in range(len(gaps_s) + 1)]
    entries = sorted([play(bot, t) for t in bot_times] + [play(casual, t) for t in human_times],
                     key=lambda e: e.ts_ms)
    check_batches(backing, keys, [entries[i:i + 4] for i in range(0, len(entries), 4)])
    assert redis_client.get(keys.flagged(bot)) == "cadence_regularity"
    (event,) = [e for e in events_of(backing, bot) if e["action"] != "logged"]
    assert event["evidence"]["cv"] < 0.003
    assert not redis_client.exists(keys.flagged(casual))
    assert decisions_of(backing, casual) == []


def test_thirty_top_actions_in_a_row_flag_a_player_a_lucky_streak_does_not(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    """Defaults: TOP_ACTION_RUN=30 accepts in a row at the board's top price."""
    board = create_board(backing, fresh_name("prices"), (("play", 1), ("win", 5),
                                                         ("jackpot", 10)))
    one_price = create_board(backing, fresh_name("flat"), (("play", 3),))
    greedy, lucky, flat = fresh_name("greedy"), fresh_name("lucky"), fresh_name("flat_player")
    gap = 17_000
    greedy_accepts = [accept(greedy, NOON_MS + i * gap + i % 5 * 900, board, 10)
                      for i in range(30)]
    # 29 jackpots, a win, 29 jackpots: never 30 in a row
    lucky_points = [10] * 29 + [5] + [10] * 29
    lucky_accepts = [accept(lucky, NOON_MS + i * gap + i % 7 * 800, board, p)
                     for i, p in enumerate(lucky_points)]
    flat_accepts = [accept(flat, NOON_MS + i * gap + i % 3 * 700, one_price, 3)
                    for i in range(40)]
    entries = sorted(greedy_accepts[:29] + lucky_accepts + flat_accepts, key=lambda e: e.ts_ms)
    batches = [entries[i:i + 10] for i in range(0, len(entries), 10)]
    check_batches(backing, keys, batches)
    check_batches(backing, keys, batches)  # a redelivery counts nothing twice
    assert not redis_client.exists(keys.flagged(greedy))  # 29 so far
    check_batches(backing, keys, [greedy_accepts[29:]])
    assert redis_client.get(keys.flagged(greedy)) == "top_action"
    (event,) = [e for e in events_of(backing, greedy) if e["action"] != "logged"]
    assert (event["rule"], event["action"]) == ("top_action", "flagged")
    assert (event["evidence"]["run"], event["evidence"]["points"]) == (30, 10)
    for honest in (lucky, flat):
        assert not redis_client.exists(keys.flagged(honest))
        assert decisions_of(backing, honest) == []

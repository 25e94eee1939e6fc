"""Pure parts of the worker and the broadcaster: no servers."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime

import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from broadcaster.admission import board_of, check_board, check_origin
from broadcaster.frames import close_frame, sse_event, text_frame
from broadcaster.hub import Hub
from broadcaster.snapshots import Snapshot
from broadcaster.sse import SseSpectator
from broadcaster.throttle import BoardSchedule, Throttle
from broadcaster.ws_connection import parse_subscribe
from scoreboard.metrics import observe_many
from scoreboard.ranking import (
    decode_cursor,
    decode_member,
    encode_cursor,
    encode_member,
    epoch_ms,
    ranks,
    totals_by_user,
)
from scoreboard.stream_entry import pack_item, parse_entry
from scoreboard.stream_trim import safe_trim_id
from workers.batching import backoff_s, months_of, parse_batch
from workers.persist_sql import staged


def fields(**overrides: str) -> dict[str, str]:
    base = {"event_id": "e1", "user_id": "u1", "username": "", "board": "global",
            "points": "3", "source": "player", "ts": "1764547199999", "ip": "", "request_id": ""}
    return {**base, **overrides}


# -- throttle ---------------------------------------------------------------------------

def test_throttle_leading_edge_after_quiet_period() -> None:
    throttle = Throttle(0.1)
    assert throttle.on_change(10.0) == 0.0
    throttle.on_sent(10.0)
    assert throttle.on_change(10.5) == 0.0  # quiet for longer than the interval


def test_throttle_coalesces_a_burst_into_one_trailing_send() -> None:
    throttle = Throttle(0.1)
    assert throttle.on_change(10.0) == 0.0
    throttle.on_sent(10.0)
    assert throttle.on_change(10.02) == pytest.approx(0.08)
    assert throttle.on_change(10.05) is None
    assert throttle.on_change(10.09) is None
    throttle.on_sent(10.1)
    assert throttle.on_change(10.12) == pytest.approx(0.08)


def test_throttle_sends_once_more_for_a_change_noticed_while_reading() -> None:
    throttle = Throttle(0.1)
    assert throttle.on_change(10.0) == 0.0
    throttle.on_read_start()
    assert throttle.on_change(10.001) is None  # may have been missed by the read
    assert throttle.on_sent(10.002) == pytest.approx(0.098)  # so: one more send
    assert throttle.on_change(10.05) is None  # rides on that one
    throttle.on_read_start()
    assert throttle.on_sent(10.102) is None  # nothing arrived during this read


def test_throttle_keeps_its_period_when_reads_are_slow_and_timers_late() -> None:
    throttle, starts, now = Throttle(0.1), [], 0.0
    delay = throttle.on_change(now)
    for _ in range(21):  # a board that changes all the time
        assert delay is not None
        now += delay + 0.015  # the event loop runs each send 15 ms late ...
        starts.append(now)
        throttle.on_read_start()
        now += 0.007  # ... and each read takes 7 ms
        throttle.on_sent(now)
        now += 0.001
        delay = throttle.on_change(now)
    assert starts[-1] - starts[0] == pytest.approx(2.0)  # 20 periods of 100 ms
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.1 - 1e-9


def test_throttle_bounds_a_burst_to_duration_over_interval_plus_two() -> None:
    throttle, sends, now, pending = Throttle(0.1), 0, 0.0, None
    for _ in range(1000):  # 1,000 changes over one second
        now += 0.001
        if pending is not None and now >= pending:
            throttle.on_sent(pending)
            sends, pending = sends + 1, None
        delay = throttle.on_change(now)
        if delay is not None:
            pending = now + delay
    if pending is not None:
        sends += 1
    assert sends <= 1.0 / 0.1 + 2


def test_board_schedule_runs_once_more_for_a_change_noticed_during_a_run() -> None:
    async def scenario() -> None:
        runs: list[str] = []
        first_started, release, second_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def job(board: str) -> None:
            runs.append(board)
            if len(runs) == 1:
                first_started.set()
                await release.wait()
            else:
                second_done.set()

        schedule = BoardSchedule(interval_s=0.0, job=job)
        schedule.change("b")  # leading edge: runs at once
        await asyncio.wait_for(first_started.wait(), 10)
        schedule.change("b")  # during the run: may be missed by it, so one more run
        schedule.change("b")  # rides on that one
        release.set()
        await asyncio.wait_for(second_done.wait(), 10)
        for _ in range(5):
            await asyncio.sleep(0)
        assert runs == ["b", "b"]

    asyncio.run(scenario())


def test_board_schedule_drops_a_run_of_a_board_forgotten_before_it_started() -> None:
    async def scenario() -> None:
        runs: list[str] = []

        async def job(board: str) -> None:
            runs.append(board)

        schedule = BoardSchedule(interval_s=0.0, job=job)
        schedule.change("gone")
        schedule.forget("gone")  # its last follower left before the timer fired
        schedule.change("kept")
        for _ in range(5):
            await asyncio.sleep(0)
        assert runs == ["kept"] and schedule.throttles.keys() == {"kept"}

    asyncio.run(scenario())


# -- hub ---------------------------------------------------------------------------------

class Recorder:
    """A spectator that records what the hub hands it."""

    kind = "websocket"

    def __init__(self) -> None:
        self.board = ""
        self.version_sent = -1
        self.received: list[Snapshot] = []
        self.shut_down = False

    def offer(self, snapshot: Snapshot) -> None:
        self.received.append(snapshot)

    def shut(self) -> None:
        self.shut_down = True


def test_hub_hands_the_same_encoded_snapshot_to_every_spectator_of_its_board() -> None:
    hub = Hub(max_per_address=10)
    first, second, elsewhere = Recorder(), Recorder(), Recorder()
    hub.join(first, "b")
    hub.join(second, "b")
    hub.join(elsewhere, "c")
    snapshot = Snapshot.build("b", 1, [{"rank": 1, "user_id": "u", "username": "u", "score": 3}])
    assert hub.publish(snapshot) == 2
    assert first.received == [snapshot] and second.received == [snapshot]
    assert first.received[0].ws_frame is second.received[0].ws_frame  # encoded once
    assert elsewhere.received == []
    assert hub.publish(Snapshot.build("nobody", 1, [])) == 0
    hub.close_all()
    assert first.shut_down and elsewhere.shut_down and hub.boards == {}


def test_sse_spectator_keeps_only_the_newest_unsent_snapshot_and_never_goes_back() -> None:
    async def scenario() -> None:
        spectator = SseSpectator()
        spectator.offer(Snapshot.build("b", 1, []))
        spectator.offer(Snapshot.build("b", 2, []))  # 1 not yet sent: replaced
        assert b'"version":2' in (await spectator.next_event(1.0) or b"")
        spectator.offer(Snapshot.build("b", 2, []))  # not newer than what was sent
        assert await spectator.next_event(0.01) == b": keepalive\n\n"
        spectator.shut()
        assert await spectator.next_event(1.0) is None

    asyncio.run(scenario())


def test_hub_address_cap() -> None:
    hub = Hub(max_per_address=2)
    assert hub.admit("1.2.3.4") and hub.admit("1.2.3.4")
    assert not hub.admit("1.2.3.4")
    assert hub.admit("5.6.7.8")
    hub.release("1.2.3.4")
    assert hub.admit("1.2.3.4")


# -- ranking -----------------------------------------------------------------------------

def test_members_sort_by_reached_time_then_user_id() -> None:
    members = [encode_member(2000, "a"), encode_member(1000, "z"), encode_member(1000, "b")]
    assert [decode_member(m)[1] for m in sorted(members)] == ["b", "z", "a"]
    assert decode_member(encode_member(1764547200123, "u:1|x")) == (1764547200123, "u:1|x")


def test_competition_and_ordinal_ranks() -> None:
    scores = [10, 10, 7, 7, 7, 1]
    assert ranks(scores, first_position=0, first_competition_rank=1,
                 mode="competition") == [1, 1, 3, 3, 3, 6]
    assert ranks(scores, first_position=0, first_competition_rank=1,
                 mode="ordinal") == [1, 2, 3, 4, 5, 6]
    # a page starting in the middle of a tie keeps the tie's rank
    assert ranks([7, 7, 1], first_position=3, first_competition_rank=3,
                 mode="competition") == [3, 3, 6]


def test_cursor_round_trip_and_refusals() -> None:
    member = encode_member(5, "u1")
    assert decode_cursor(encode_cursor(42, member)) == (42, member)
    for bad in ["", "!!!", "bm90IGpzb24", encode_cursor(1, "no-separator")]:
        with pytest.raises(ValueError):
            decode_cursor(bad)


def test_epoch_ms_rounds_instead_of_truncating() -> None:
    moment = datetime.fromtimestamp(1795742126998 / 1000, UTC)
    assert epoch_ms(moment) == 1795742126998


def test_totals_by_user() -> None:
    assert totals_by_user([(encode_member(1, "a"), -5.0), (encode_member(2, "b"), -3.0)]) == {
        "a": 5, "b": 3}


# -- worker batching ---------------------------------------------------------------------

def test_parse_batch_separates_malformed_and_deleted_entries() -> None:
    parsed = parse_batch([("1-0", fields()), ("2-0", fields(points="lots")),
                          ("3-0", None), ("4-0", {"event_id": "x"}), ("5-0", fields(points="0"))])
    assert [e.stream_id for e in parsed.entries] == ["1-0"]
    reasons = {stream_id: why for stream_id, _, why in parsed.malformed}
    assert set(reasons) == {"2-0", "3-0", "4-0", "5-0"}
    assert reasons["3-0"] == "entry no longer in the stream"
    assert reasons["4-0"].startswith("malformed: missing fields")


def test_an_entry_keeps_its_own_time_and_month() -> None:
    last_ms_of_november = int(datetime(2025, 12, 1, tzinfo=UTC).timestamp() * 1000) - 1
    entry = parse_entry("1-0", fields(ts=str(last_ms_of_november)))
    assert months_of([entry]) == {date(2025, 11, 1)}


def test_a_packed_entry_reads_as_the_plain_one() -> None:
    """``lua/batch.lua`` writes an increment as ``item`` + ``context``; the worker must
    read the same entry from it, a display name with separators' neighbours intact."""
    plain = fields(username="Zoë | the\tbest", source="backend:b1", ip="10.0.0.7",
                   request_id="r-1", traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
    packed = {"item": pack_item("e1", "u1", "global", 3, "Zoë | the\tbest"),
              "context": "\x1f".join(["backend:b1", "1764547199999", "10.0.0.7", "r-1"]),
              "traceparent": plain["traceparent"]}
    assert parse_entry("1-0", packed) == parse_entry("1-0", plain)
    assert parse_entry("1-0", {**packed, "traceparent": ""}).traceparent == ""
    with pytest.raises(ValueError, match="too few parts"):
        parse_entry("1-0", {**packed, "item": "e1\x1fu1"})
    with pytest.raises(ValueError, match="too few parts"):
        parse_entry("1-0", {"item": packed["item"]})
    with pytest.raises(ValueError, match="must be positive"):
        parse_entry("1-0", {**packed, "item": pack_item("e1", "u1", "global", 0, "")})
    with pytest.raises(ValueError, match="must be integers"):
        parse_entry("1-0", {**packed, "item": "e1\x1fu1\x1fglobal\x1fthree\x1f"})


def test_staged_columns_are_the_entries_values_joined_by_the_separator() -> None:
    first = parse_entry("1-0", fields(ip="10.0.0.1", request_id="r1"))
    second = parse_entry("2-0", fields(event_id="e2", points="5"))
    assert staged([first, second]) == (
        "e1\x1fe2", "1764547199999\x1f1764547199999", "u1\x1fu1", "global\x1fglobal",
        "3\x1f5", "player\x1fplayer", "10.0.0.1\x1f", "r1\x1f", "1-0\x1f2-0")


def test_an_entry_whose_field_holds_the_separator_or_lacks_an_id_is_malformed() -> None:
    """The worker joins a batch's columns with the separator: a field holding it
    would shift every value after it into the next row."""
    with pytest.raises(ValueError, match="holds the separator"):
        parse_entry("1-0", fields(event_id="e1\x1fe2"))
    with pytest.raises(ValueError, match="holds the separator"):
        parse_entry("1-0", {"item": pack_item("e1", "u1", "global", 3, "Zoë\x1fx"),
                            "context": "player\x1f1764547199999\x1f\x1fr-1"})
    with pytest.raises(ValueError, match="must not be empty"):
        parse_entry("1-0", fields(event_id=""))


def test_observe_many_gives_the_samples_of_one_observe_each() -> None:
    amounts = [0.0, 0.004, 0.005, 0.0051, 0.02, 0.02, 0.5, 3.0, 99.0, 7.25]
    one_by_one, bulk = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.01, 0.05, 1, 5)
    expected = Histogram("h", "h", buckets=buckets, registry=one_by_one)
    for amount in amounts:
        expected.observe(amount)
    observe_many(Histogram("h", "h", buckets=buckets, registry=bulk), amounts)
    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for metric in registry.collect()
                for s in metric.samples if not s.name.endswith("_created")]
    assert samples(bulk) == samples(one_by_one)


def test_safe_trim_id_keeps_pending_and_undelivered() -> None:
    assert safe_trim_id([]) is None
    assert safe_trim_id([("10-0", None)]) == "10-0"
    assert safe_trim_id([("10-0", "7-3")]) == "7-3"
    assert safe_trim_id([("10-0", None), ("5-1", None)]) == "5-1"
    assert safe_trim_id([("100-0", "9-0"), ("50-0", None)]) == "9-0"


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_s(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff_s(50) == 5.0


def test_hub_reports_a_board_nobody_watches_any_more() -> None:
    emptied: list[str] = []
    hub = Hub(max_per_address=10)
    hub.on_board_empty.append(emptied.append)
    first, second = Recorder(), Recorder()
    hub.join(first, "x")
    hub.join(second, "x")
    hub.join(first, "y")  # a switch leaves x with one watcher
    assert emptied == []
    hub.leave(second)
    hub.leave(first)
    assert emptied == ["x", "y"]


# -- broadcaster wire formats and admission ----------------------------------------------

@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_text_frame_is_what_the_websockets_library_parses_back(size: int) -> None:
    payload = b"x" * size
    frame = text_frame(payload)
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    assert parsed.value.value == Frame(Opcode.TEXT, payload)
    assert not reader.buffer  # nothing left over: the length was right


def test_close_frame_carries_code_and_a_cut_reason() -> None:
    frame = close_frame(1001, "r" * 200)
    assert frame[0] == 0x88 and frame[1] == 125 and frame[2:4] == (1001).to_bytes(2)


def test_sse_event_is_one_data_line() -> None:
    assert sse_event(b'{"a":1}') == b'event: snapshot\ndata: {"a":1}\n\n'


def test_admission_refusals() -> None:
    assert board_of("board=arena&x=1") == "arena" and board_of("") == "global"
    assert check_board("arena") is None
    refused = check_board("bad board")
    assert refused is not None and refused.status == 422 and refused.code == "invalid_field"
    assert check_origin(None, frozenset({"https://a.example"})) is None  # a bot
    assert check_origin("https://a.example", frozenset({"https://a.example"})) is None
    assert check_origin("https://evil.example", None) is None  # any origin allowed
    foreign = check_origin("https://evil.example", frozenset({"https://a.example"}))
    assert foreign is not None and foreign.status == 403
    assert orjson.loads(foreign.body())["error"]["code"] == "origin_not_allowed"


def test_parse_subscribe_takes_only_a_well_formed_subscribe() -> None:
    assert parse_subscribe(b'{"type": "subscribe", "board": "arena"}') == ("arena", "all_time")
    assert parse_subscribe(b'{"type": "subscribe", "board": "arena", "window": "daily"}') == (
        "arena", "daily")
    for message in (b"not json", b"[]", b'{"type": "watch", "board": "arena"}',
                    b'{"type": "subscribe", "board": "bad board"}',
                    b'{"type": "subscribe", "board": 7}', b'{"type": "subscribe"}',
                    b'{"type": "subscribe", "board": "arena", "window": "hourly"}'):
        assert parse_subscribe(message) is None

"""Part 2 of the broadcaster benchmark: POST 202 -> spectator receipt at a paced rate,
through ingest, one worker and one broadcaster (the method is in the docstring of
loadtest/bench_broadcaster.py, which runs it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as redis_asyncio
import uvloop

from loadtest import BenchError
from loadtest.broadcaster_report import (
    BOARD_POLL_S,
    DEFAULT_SNAPSHOT_SIZE,
    Accepted,
    DriveResult,
    LatencyResult,
)
from loadtest.harness.backing import Backing
from loadtest.harness.cpu import cores, cpu_seconds
from loadtest.harness.http import INCREMENT_PATH, encode_post, open_connection
from loadtest.harness.players import (
    HIGH_RATE,
    create_players,
    fetch_tokens,
    ingest_env,
    jwt_subject,
)
from loadtest.harness.processes import (
    broadcaster_process,
    ingest_process,
    worker_process,
)
from loadtest.harness.spectator_client import CONNECT_TIMEOUT_S
from loadtest.harness.spectators import ClientProcess
from scoreboard.keys import Keys
from scoreboard.ranking import totals_by_user

LATENCY_BOARD = "global"  # the board of loadtest.harness.players.fetch_tokens' bodies
TAIL_S = 2.0  # after the last increment, time for its snapshot to arrive


# --- Part 2: POST 202 -> spectator receipt at a paced rate -----------------------------------


@dataclass(frozen=True)
class Lane:
    user_id: str
    requests: list[bytes]  # encoded POSTs, each with an action token of this player


async def drive(url: str, lanes: list[Lane], rate: float, warmup_s: float,
                duration_s: float) -> DriveResult:
    """Send increments at ``rate``/s on a fixed schedule. Each goes to a player with
    no POST in flight (each player's POSTs go one after the other, on a keep-alive
    connection of its own), so a player's stream entries are in the order of its 202s."""
    total, first_measured = int(rate * (warmup_s + duration_s)), int(rate * warmup_s)
    result = DriveResult()
    connections = [await open_connection(url) for _ in lanes]
    used, accepted = [0] * len(lanes), [0] * len(lanes)
    idle: asyncio.Queue[int] = asyncio.Queue()
    for k in range(len(lanes)):
        idle.put_nowait(k)
    in_flight: set[asyncio.Task[None]] = set()

    async def post(k: int, request: bytes, due: float, measured: bool) -> None:
        sent = time.perf_counter()
        status, body = await connections[k].post(request)
        answered = time.perf_counter()
        result.statuses[str(status)] += 1
        if measured:
            result.window_sent += 1
            result.post_ms.append((answered - sent) * 1000)
            result.lag_ms.append((sent - due) * 1000)
        if status == 202:
            accepted[k] += 1
            result.accepted.append(Accepted(k, accepted[k], time.time() * 1000, measured))
        elif not result.first_refusal:
            result.first_refusal = body.decode(errors="replace")[:200]
        idle.put_nowait(k)

    t0 = time.perf_counter() + 0.2
    result.started_ms = (time.time() + 0.2) * 1000
    window_start = t0 + first_measured / rate
    try:
        for i in range(total):
            due = t0 + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            k = await idle.get()
            if used[k] == len(lanes[k].requests):
                result.tokens_short += 1
                continue  # this player is out of tokens: it stays out of the pool
            used[k] += 1
            task = asyncio.create_task(post(k, lanes[k].requests[used[k] - 1], due,
                                            i >= first_measured))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        result.window_s = time.perf_counter() - window_start
        result.ended_ms = time.time() * 1000
    finally:
        for connection in connections:
            connection.close()
    return result


Scores = dict[str, int]  # user id -> total, as a snapshot or the board shows it


def first_reflecting(by_lane: dict[int, list[Accepted]], lanes: list[Lane],
                     samples: Sequence[Scores]) -> dict[tuple[int, int], int]:
    """For each (lane, ordinal), the index of the first of ``samples`` (in time
    order) showing that player at >= ordinal, i.e. with that increment applied."""
    found: dict[tuple[int, int], int] = {}
    for k, increments in by_lane.items():
        position, user_id = 0, lanes[k].user_id
        for index, scores in enumerate(samples):
            score = scores.get(user_id, 0)
            while position < len(increments) and increments[position].ordinal <= score:
                found[(k, increments[position].ordinal)] = index
                position += 1
    return found


def match(drive_result: DriveResult, kept: list[tuple[int, float, str]], lanes: list[Lane],
          spectators: int, board: list[tuple[float, Scores]],
          cpu: dict[str, float]) -> LatencyResult:
    """For each spectator and each increment of the window, the first snapshot that
    reflects it; and the first board poll that does, to split the time."""
    by_lane: dict[int, list[Accepted]] = {}
    for accepted in sorted(drive_result.accepted, key=lambda a: (a.lane, a.ordinal)):
        by_lane.setdefault(accepted.lane, []).append(accepted)
    measured = [a for a in drive_result.accepted if a.in_window]
    on_board = first_reflecting(by_lane, lanes, [scores for _, scores in board])
    board_ms = sorted(board[on_board[(a.lane, a.ordinal)]][0] - a.answered_ms
                      for a in measured if (a.lane, a.ordinal) in on_board)
    receipt, build, delivery, unseen = [], [], [], 0
    for index in range(spectators):
        snapshots = []
        for spectator, received_ms, payload in kept:
            if spectator == index:
                message = orjson.loads(payload)
                snapshots.append((received_ms, float(message["ts"]), {
                    e["user_id"]: e["score"] for e in message["entries"]}))
        seen = first_reflecting(by_lane, lanes, [scores for _, _, scores in snapshots])
        for accepted in measured:
            key = (accepted.lane, accepted.ordinal)
            if key not in seen:
                unseen += 1
                continue
            received_ms, built_ms, _ = snapshots[seen[key]]
            receipt.append(received_ms - accepted.answered_ms)
            delivery.append(received_ms - built_ms)
            if key in on_board:
                build.append(built_ms - board[on_board[key]][0])
    driven = sum(1 for _, received_ms, _ in kept
                 if drive_result.started_ms <= received_ms <= drive_result.ended_ms)
    driven_s = (drive_result.ended_ms - drive_result.started_ms) / 1000
    return LatencyResult(drive_result, spectators, sorted(receipt), board_ms, sorted(build),
                         sorted(delivery), unseen, driven / spectators / driven_s, len(board),
                         cpu)


async def watch_board(redis_url: str, keys: Keys, stop: asyncio.Event,
                      into: list[tuple[float, Scores]]) -> None:
    """Every ~``BOARD_POLL_S``, read the whole board; keep each new state with the
    time.time() it was seen at."""
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        while not stop.is_set():
            rows = await client.zrange(keys.board(LATENCY_BOARD), 0, -1, withscores=True)
            seen_ms, scores = time.time() * 1000, totals_by_user(rows)
            if not into or into[-1][1] != scores:
                into.append((seen_ms, scores))
            await asyncio.sleep(BOARD_POLL_S)
    finally:
        await client.aclose()


async def measure_latency(args: argparse.Namespace, ingest_url: str, ws_url: str,
                          lanes: list[Lane], *, redis_url: str, redis_client: Any, keys: Keys,
                          pids: dict[str, int]) -> LatencyResult:
    spectators = await ClientProcess.start(ws_url, "raw", keep=True)
    crowd = await ClientProcess.start(ws_url, "raw")  # on the same board, not matched
    stop, board = asyncio.Event(), list[tuple[float, Scores]]()
    watcher = asyncio.create_task(watch_board(redis_url, keys, stop, board))
    try:
        for clients, count in ((spectators, args.spectators), (crowd, args.crowd)):
            if not count:
                continue
            connected = await clients.call({"op": "connect", "count": count, "parallel": 50,
                                            "deadline_s": CONNECT_TIMEOUT_S},
                                           CONNECT_TIMEOUT_S + 30)
            if connected["connected"] != count:
                raise BenchError(f"spectators failed to connect: {connected['failures']}")
        await spectators.call({"op": "start"})
        pids = {**pids, "spectators": spectators.pid, "crowd": crowd.pid}
        before = cpu_seconds(pids, redis_client, own="driver")
        drive_result = await drive(ingest_url, lanes, args.rate, args.latency_warmup,
                                   args.latency_duration)
        after = cpu_seconds(pids, redis_client, own="driver")
        await asyncio.sleep(TAIL_S)
        window = await spectators.call({"op": "stop"})
    finally:
        stop.set()
        await asyncio.gather(watcher, spectators.stop(), crowd.stop(), return_exceptions=True)
    kept = [(int(index), float(at), str(payload)) for index, at, payload in window["kept"]]
    return match(drive_result, kept, lanes, args.spectators, board, cores(before, after))


def run_latency(args: argparse.Namespace, backing: Backing, root: Path,
                redis_client: Any) -> LatencyResult:
    # One player sends rate/lanes increments per second: the fraud rule for rapid
    # actions (and the reduced limit of flagged users) is raised out of the way, as
    # ingest_env does for the other limits.
    env = {**ingest_env(backing), "RAPID_MAX_ACTIONS": str(10**9),
           "FLAGGED_INCREMENT_RATE": HIGH_RATE}
    keys = Keys(backing.key_prefix)
    with contextlib.ExitStack() as stack:
        url, ingest_pid = stack.enter_context(ingest_process(env, root / "ingest.log"))
        worker_pid = stack.enter_context(worker_process(env, root / "worker.log",
                                                        redis_client, keys))
        broadcaster_url, broadcaster_pid = stack.enter_context(broadcaster_process(
            {**env, "SNAPSHOT_SIZE": str(max(args.lanes, DEFAULT_SNAPSHOT_SIZE))},
            root / "broadcaster-latency.log", max_per_ip=args.spectators + args.crowd + 100,
            interval_ms=args.latency_interval_ms))
        print(f"end to end: ingest, worker and broadcaster up; registering {args.lanes} "
              "players and fetching action tokens…", flush=True)
        players = asyncio.run(create_players(url, args.lanes))
        # A player takes the next increment whenever it has none in flight, so the
        # players' shares differ a little: each gets 20% more tokens than an equal share.
        count = int(args.rate * (args.latency_warmup + args.latency_duration) * 1.2)
        requests, _ = asyncio.run(fetch_tokens(url, players, count, concurrency=16))
        host = urlsplit(url).netloc
        by_player: dict[str, list[bytes]] = {p["Authorization"]: [] for p in players}
        for headers, body in requests:  # in the order the tokens came, not round-robin
            by_player[headers["Authorization"]].append(
                encode_post(host, INCREMENT_PATH, headers, body.encode()))
        lanes = [Lane(jwt_subject(authorization), posts)
                 for authorization, posts in by_player.items()]
        print(f"end to end: {args.rate:g} increments/s for {args.latency_warmup:g} + "
              f"{args.latency_duration:g} s…", flush=True)
        ws_url = broadcaster_url.replace("http://", "ws://") + f"/ws?board={LATENCY_BOARD}"
        return uvloop.run(measure_latency(
            args, url, ws_url, lanes, redis_url=backing.redis_url, redis_client=redis_client,
            keys=keys,
            pids={"ingest": ingest_pid, "worker": worker_pid, "broadcaster": broadcaster_pid}))



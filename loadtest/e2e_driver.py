"""The end-to-end benchmark's load generator, run as a process of its own.

    python -m loadtest.e2e_driver JOB.json RESULT.json

Sends POST /api/scores/increment to ``url`` from ``start_at`` until
``window_end`` (both ``time.monotonic()``, which on Linux is one clock for
every process of the machine, so the orchestrator fixes the window and
samples its edges itself):

- the load: ``requests`` (player index, JSON body) either closed loop
  (``rate`` 0: ``concurrency`` connections, each sending its next request
  when the previous one has answered: the most the server can take) or open
  loop (``rate`` > 0: request i is due at ``start_at + i / rate`` and goes out
  on the first of ``concurrency`` connections that is free; its latency is
  counted from when it was due, so a server that falls behind is charged
  for the queue it causes, not excused by it);
- the probes: ``probes`` (player index, body), one every ``1 / probe_rate`` s
  on connections of their own, whatever the load does. Each lifts a fresh
  player to the top of the board with a score nobody else has, so a
  spectator can tell the moment it sees that increment.

With ``cycle`` the requests start over when they run out (for the baseline,
which does not consume action tokens); without it the load stops and the
result says so.

``RESULT`` holds every request sent: (index, due, sent, done, status), the
times in ``time.monotonic()`` seconds, and for probes also the wall-clock
send time (``time.time()``, the clock the spectators' receipt times use).
The client is the harness's raw HTTP/1.1 one (``loadtest/harness/http.py``
says why not httpx), on uvloop.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from loadtest.harness.command import job_main
from loadtest.harness.http import INCREMENT_PATH, HttpConnection, encode_post, open_connection

DRAIN_TIMEOUT_S = 30  # requests still in flight at the window's end get this long
PROBE_CONNECTIONS = 8  # probes in flight at once, at most
LINGER_S = 1.0


class Sender:
    """One keep-alive connection, reopened after a failure; records every request."""

    def __init__(self, url: str, into: list[list[Any]]) -> None:
        self.url = url
        self.into = into
        self.connection: HttpConnection | None = None

    async def send(self, index: int, due: float, request: bytes,
                   extra: tuple[float, ...] = ()) -> None:
        sent = time.monotonic()
        try:
            if self.connection is None or self.connection.closed:
                self.connection = await open_connection(self.url)
            status = str((await self.connection.post(request))[0])
        except OSError as exc:
            status = type(exc).__name__
        self.into.append([index, due, sent, time.monotonic(), status, *extra])

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


async def drive(job: dict[str, Any]) -> dict[str, Any]:
    url, host = job["url"], urlsplit(job["url"]).netloc
    players: list[dict[str, str]] = job["players"]
    requests: list[list[Any]] = job["requests"]
    probes: list[list[Any]] = job["probes"]
    start_at, window_end = float(job["start_at"]), float(job["window_end"])
    concurrency, rate, cycle = int(job["concurrency"]), float(job["rate"]), bool(job["cycle"])

    def encode(player: int, body: str) -> bytes:
        return encode_post(host, INCREMENT_PATH, players[player], body.encode())

    done: list[list[Any]] = []
    probes_done: list[list[Any]] = []
    exhausted = asyncio.Event()
    late_start_s = max(0.0, time.monotonic() - start_at)
    next_index = 0

    def take() -> int | None:
        """The next request's index, or None when they ran out (and not cycling)."""
        nonlocal next_index
        if next_index >= len(requests) and not cycle:
            exhausted.set()
            return None
        index, next_index = next_index, next_index + 1
        return index

    async def closed_worker(sender: Sender) -> None:
        while time.monotonic() < window_end:
            index = take()
            if index is None:
                return
            player, body = requests[index % len(requests)]
            now = time.monotonic()
            await sender.send(index, now, encode(player, body))

    async def open_loop(senders: list[Sender]) -> None:
        idle: asyncio.Queue[Sender] = asyncio.Queue()
        for sender in senders:
            idle.put_nowait(sender)
        tasks: set[asyncio.Task[None]] = set()

        async def one(sender: Sender, index: int, due: float, request: bytes) -> None:
            try:
                await sender.send(index, due, request)
            finally:
                idle.put_nowait(sender)

        step = 0
        while True:
            due = start_at + step / rate
            if due >= window_end:
                break
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            index = take()
            if index is None:
                break
            sender = await idle.get()  # all busy: this request (and the next) go late
            player, body = requests[index % len(requests)]
            task = asyncio.create_task(one(sender, index, due, encode(player, body)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            step += 1
        if tasks:
            await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)

    async def probe_loop() -> None:
        if not probes or job["probe_rate"] <= 0:
            return
        idle: asyncio.Queue[Sender] = asyncio.Queue()
        senders = [Sender(url, probes_done) for _ in range(PROBE_CONNECTIONS)]
        for sender in senders:
            idle.put_nowait(sender)
        tasks: set[asyncio.Task[None]] = set()

        async def one(sender: Sender, index: int, due: float, request: bytes) -> None:
            try:
                await sender.send(index, due, request, (time.time(),))
            finally:
                idle.put_nowait(sender)

        try:
            for index, (player, body) in enumerate(probes):
                due = start_at + index / job["probe_rate"]
                if due >= window_end:
                    break
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                sender = await idle.get()
                task = asyncio.create_task(one(sender, index, due, encode(player, body)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        finally:
            for sender in senders:
                sender.close()

    if (delay := start_at - time.monotonic()) > 0:
        await asyncio.sleep(delay)
    senders = [Sender(url, done) for _ in range(concurrency)]
    prober = asyncio.create_task(probe_loop())
    try:
        if rate > 0:
            await open_loop(senders)
        else:
            workers = [asyncio.create_task(closed_worker(s)) for s in senders]
            _, stuck = await asyncio.wait(workers, timeout=window_end - time.monotonic()
                                          + DRAIN_TIMEOUT_S)
            for task in stuck:
                task.cancel()
        await prober
    finally:
        prober.cancel()
        for sender in senders:
            sender.close()
    # Outlive the window's end by a little: the orchestrator reads this process's CPU
    # time at that edge, from /proc.
    await asyncio.sleep(max(0.0, window_end + LINGER_S - time.monotonic()))
    return {"requests": done, "probes": probes_done, "exhausted": exhausted.is_set(),
            "late_start_s": late_start_s, "ended_at": time.monotonic()}


def main(argv: list[str]) -> int:
    return job_main("loadtest.e2e_driver", drive, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

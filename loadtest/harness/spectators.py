"""Spectators in client processes of their own, seen from the benchmark that runs them.

:class:`ClientProcess` is the handle on one client process
(``loadtest.harness.spectator_client``, or any module speaking its protocol:
one JSON command per stdin line, one JSON reply per stdout line).
:class:`Fleet` is the sequence the broadcaster benchmark's parts run over
several of them: split the spectators, connect them, count one window with
every party's CPU, stop every process. :func:`writing_beside` keeps a board
writer going meanwhile and stops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from loadtest import BenchError
from loadtest.harness.cpu import cores, cpu_seconds
from loadtest.harness.processes import PROJECT_DIR


class ClientProcess:
    """The orchestrator's handle on one client process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, ws_url: str, kind: str, *, keep: bool = False) -> ClientProcess:
        """A process of ``loadtest.harness.spectator_client``'s spectators, watching ``ws_url``."""
        return await cls.start_module("loadtest.harness.spectator_client", ws_url,
                                      "--client", kind, *(["--keep"] if keep else []))

    @classmethod
    async def start_module(cls, module: str, *args: str) -> ClientProcess:
        """``python -m module *args``: any process speaking this protocol."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args, cwd=PROJECT_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**27)
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def call(self, command: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        if not line:
            raise BenchError(f"client process {self.pid} exited (status "
                             f"{await self.process.wait()})")
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.call({"op": "close"}, 30)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal positive counts (fewer when ``total`` is)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass(frozen=True)
class Connected:
    """What a :class:`Fleet`'s connect got, over all its processes."""

    connected: int
    failures: dict[str, int]  # reason -> spectators that did not connect
    seconds: float  # the slowest process's


@dataclass(frozen=True)
class Window:
    """One measured window of a :class:`Fleet`, merged over its processes."""

    seconds: float  # the processes' mean window
    per_client: list[int]  # messages each spectator received in it
    ranks: int  # of which rank messages
    bins: dict[int, int]  # ts -> receipt (``loadtest.harness.figures``' bins)
    fresh_bins: dict[int, int]  # total written -> rank message received
    closed: dict[str, int]  # close code -> spectators closed in the window
    still_open: int
    cpu: dict[str, float]  # cores of each party (``loadtest.harness.cpu.cores``)
    span_s: float  # between the two CPU readings: the rate of a server counter over it

    @classmethod
    def merge(cls, replies: list[dict[str, Any]], cpu: dict[str, float],
              span_s: float) -> Window:
        bins: Counter[int] = Counter()
        fresh: Counter[int] = Counter()
        closed: Counter[str] = Counter()
        for reply in replies:
            bins.update({int(k): v for k, v in reply["bins"].items()})
            fresh.update({int(k): v for k, v in reply["fresh_bins"].items()})
            closed.update(reply["closed"])
        return cls(seconds=sum(r["seconds"] for r in replies) / len(replies),
                   per_client=[n for r in replies for n in r["per_client"]],
                   ranks=sum(r["ranks"] for r in replies), bins=dict(bins),
                   fresh_bins=dict(fresh), closed=dict(closed),
                   still_open=sum(r["open"] for r in replies), cpu=cpu, span_s=span_s)


class Fleet:
    """``counts[i]`` spectators of one URL in client process ``i``: one sequence for
    every part of the broadcaster benchmark that measures a crowd. Open it with
    ``async with Fleet.open(...)``: each process is stopped when the block ends,
    however it ends."""

    def __init__(self, clients: list[ClientProcess], counts: list[int]) -> None:
        self.clients = clients
        self.counts = counts

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, ws_url: str, kind: str, *, total: int,
                   processes: int) -> AsyncIterator[Fleet]:
        """``total`` spectators' client processes (``processes`` at most), not yet connected."""
        counts = shares(total, processes)
        clients: list[ClientProcess] = []
        try:
            clients = list(await asyncio.gather(*(ClientProcess.start(ws_url, kind)
                                                  for _ in counts)))
            yield cls(clients, counts)
        finally:
            await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.clients]

    async def connect(self, *, parallel: int, deadline_s: float, watch_players: int = 0,
                      epoch_ms: int = 0) -> Connected:
        """Connect every spectator (``parallel`` handshakes in flight per process). With
        ``watch_players`` W, the fleet's spectator i also watches ``watched_{i mod W}``."""
        offsets = [sum(self.counts[:i]) for i in range(len(self.counts))]
        replies = await asyncio.gather(*(
            c.call({"op": "connect", "count": n, "parallel": parallel, "deadline_s": deadline_s,
                    **({"watch_players": watch_players, "watch_offset": offset,
                        "epoch_ms": epoch_ms} if watch_players else {})}, deadline_s + 60)
            for c, n, offset in zip(self.clients, self.counts, offsets, strict=True)))
        failures: Counter[str] = Counter()
        for reply in replies:
            failures.update(reply["failures"])
        return Connected(connected=sum(r["connected"] for r in replies),
                         failures=dict(failures), seconds=max(r["seconds"] for r in replies))

    async def window(self, during: Callable[[], Awaitable[None]], *, server_pid: int,
                     redis_client: Any) -> Window:
        """Count what every spectator receives while ``during()`` runs (the window's
        length: a sleep, or a sampling loop), with the CPU of the server, the
        clients, Redis and this process over the same span."""
        parties: dict[str, int | list[int]] = {"server": server_pid, "clients": self.pids}
        before = cpu_seconds(parties, redis_client, own="orchestrator")
        await asyncio.gather(*(c.call({"op": "start"}) for c in self.clients))
        await during()
        replies = await asyncio.gather(*(c.call({"op": "stop"}) for c in self.clients))
        after = cpu_seconds(parties, redis_client, own="orchestrator")
        return Window.merge(list(replies), cores(before, after), after["at"] - before["at"])


@contextlib.asynccontextmanager
async def writing_beside(writer: Coroutine[Any, Any, None] | None,
                         stop: asyncio.Event) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Run ``writer`` (a board writer that ends when ``stop`` is set; None: no writer)
    for the block; at its end set ``stop`` and wait for the writer. The block gets
    a check to await after its window: it raises what ended the writer early, so a
    window measured without its writes is not reported."""
    task = asyncio.create_task(writer) if writer is not None else None

    async def check() -> None:
        if task is not None and task.done():
            await task

    try:
        yield check
    finally:
        stop.set()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

"""The stream consumer: XREADGROUP batches into Postgres, then the boards, then XACK.

Order per batch, which is what makes every accepted increment count once:
1. persist the batch in one Postgres transaction (``workers.persist``);
2. the fraud checks that ride along, then ONE script call that sets the
   boards to the committed totals (compare-and-set on versions), XACKs and
   announces the change (``scoreboard.board_writes``).
A crash anywhere leaves the entries pending; they come back (to this consumer
on restart, or to any consumer through XAUTOCLAIM once idle), step 1 then
inserts nothing new and step 2 writes the same totals.

Pipelined: up to ``in_flight`` batches are in Postgres at once, each on a
pool connection of its own (one consumer's statements no longer wait for
each other: BENCHMARKS.md, "Worker"), while the next batch is being read and
parsed and an earlier batch's step 2 runs. Each batch still goes 1 then 2 in
that order, and nothing is acknowledged before its own commit; step 2 runs
in the order the batches were read (a batch committed first waits for the
batches read before it), so the boards, names and acknowledgements go out
as they did one batch at a time. At most ``in_flight + 1`` batches are
between read and acknowledged; a stop finishes all of them.

Two batches of one consumer in Postgres at once do not deadlock each other in
the plain statement: it takes its locks in one order (``counted_events`` keys
sorted, then ``scores`` rows sorted by board and user, ``workers.persist_sql``);
a deadlock that remains possible (the windowed statement's two upserts, a
players rename) is retried like any transient failure.

Failures: Postgres or Redis unreachable (or a deadlock) is transient: the
same batch is retried with capped backoff, nothing acknowledged, nothing new
read. A batch Postgres refuses for its data is split and persisted entry by
entry; an entry that still fails stays pending, is retried through
XAUTOCLAIM, and past ``max_deliveries`` goes to the dead-letter stream with
the reason, is counted, logged and acknowledged. A malformed entry goes there
at once: retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.exceptions
from prometheus_client import Counter, Histogram

from scoreboard.board_defs import DefinitionCache
from scoreboard.board_writes import apply_and_ack
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.metrics import observe_many
from scoreboard.redis_clients import cluster_unsettled, is_cluster
from scoreboard.stream_entry import StreamEntry
from scoreboard.tracing import Tracing, client_span, inner_span
from workers.batching import ParsedBatch, backoff_s, parse_batch
from workers.chaos import ChaosMarks
from workers.persist import PartitionCache, persist_batch
from workers.players import KnownPlayers

logger = logging.getLogger(__name__)

PERSISTED = Counter("scoreboard_worker_persisted_total", "Actions inserted into Postgres")
DEAD_LETTERED = Counter("scoreboard_worker_dead_lettered_total",
                        "Stream entries moved to the dead-letter stream", ["reason"])
BATCH_SIZE = Histogram("scoreboard_worker_batch_size", "Entries per persisted batch",
                       buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500))
BATCH_SECONDS = Histogram("scoreboard_worker_batch_seconds",
                          "Persist + acknowledge time of one batch",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
# The worker's share of "POST -> visible": from the entry's acceptance time
# (Redis TIME in the ingest script, just before the 202) to its batch being on
# the boards and acknowledged. Across hosts it includes their clock offset.
FRESHNESS = Histogram("scoreboard_worker_freshness_seconds",
                      "Acceptance of an entry to its total on the board",
                      buckets=(0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1,
                               0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30))

HEARTBEAT_EVERY_S = 1.0
CLAIM_PAGE = 100
CHAOS_EXIT_STATUS = 86


@dataclass(frozen=True)
class Persisted:
    """A committed batch (or, split after a refusal, one of its entries) and what
    its transaction returned, waiting for its step 2."""

    entries: Sequence[StreamEntry]
    result: Any
    started: float
    # Tracing on: the context inside its batch's span, so that its step 2's spans
    # (fraud checks, apply_batch.lua) are that span's children.
    context: contextvars.Context | None = None


@dataclass(frozen=True)
class ReadBatch:
    """What one XREADGROUP returned, and the same parsed."""

    raw: list[tuple[str, dict[str, str] | None]]
    parsed: ParsedBatch


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch later can succeed (the server, not the data).

    On a cluster, a command whose connection the client closed under it
    (scoreboard.redis_clients.cluster_unsettled) is retried too."""
    if isinstance(exc, asyncpg.DataError):  # client-side encoding: the data is bad
        return False
    if cluster_unsettled(exc):
        return True
    return isinstance(exc, (
        OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError, asyncpg.DeadlockDetectedError,
        asyncpg.SerializationError, asyncpg.AdminShutdownError,
        redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
        # a cluster's slot without a master for a moment (a failover under way)
        redis.exceptions.ClusterError, redis.exceptions.TryAgainError,
        redis.exceptions.SlotNotCoveredError))


class StreamConsumer:
    def __init__(self, *, redis: Any, pool: Any, keys: Keys, group: str, name: str,
                 batch_max: int, block_ms: int, claim_idle_ms: int, max_deliveries: int,
                 in_flight: int = 1, reclaim_every_s: float | None = None,
                 chaos_exit_after_commit: float = 0.0,
                 chaos_marks: ChaosMarks | None = None,
                 after_batch: Callable[[Sequence[StreamEntry]], Awaitable[None]] | None = None,
                 every_second: Callable[[], Awaitable[Any]] | None = None,
                 tracing: Tracing | None = None, board_refresh_s: float = 2.0,
                 board_keys: Keys | None = None) -> None:
        """``keys``: the keys of the stream consumed (a shard's, sharded);
        ``board_keys``: the deployment's, for boards and their definitions (default
        ``keys``: unsharded they are the same); ``in_flight``: batches in Postgres
        at once, each holding a pool connection (the pool needs that many)."""
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.board_keys = board_keys or keys
        self.group = group
        self.name = name
        self.batch_max = batch_max
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.reclaim_every_s = reclaim_every_s if reclaim_every_s is not None else max(
            1.0, claim_idle_ms / 2000)
        self.partitions = PartitionCache()
        self.players = KnownPlayers()
        self.definitions = DefinitionCache(redis, self.board_keys.board_definitions,
                                           refresh_s=board_refresh_s)
        self.scripts = register_scripts(redis)
        self.chaos_exit_after_commit = chaos_exit_after_commit
        self.chaos_marks = chaos_marks
        self.after_batch = after_batch
        self.every_second = every_second
        self.tracing = tracing
        self._stopping = asyncio.Event()
        self.in_flight = in_flight
        self._postgres_slots = asyncio.Semaphore(in_flight)
        self._batches: set[asyncio.Task[None]] = set()  # read, not yet acknowledged
        self._last_batch: asyncio.Task[None] | None = None  # the one read last
        self._failed: BaseException | None = None
        self._last_heartbeat = 0.0
        self._last_reclaim = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Until stopped: drain this consumer's own pending entries, then new ones.

        The next batch is read and parsed while earlier ones are persisted
        (one read ahead, no more): XREADGROUP and parsing overlap the Postgres
        transactions. A read that was sent is always awaited and what it
        returned persisted, stopping or not: those entries are already
        delivered to this consumer, and leaving them pending would hold them
        back until this consumer restarts or they are reclaimed. A batch that
        fails with an error that is not transient ends the loop with that error.
        """
        await self._retry_transient(self.ensure_group)
        start = "0"  # first our own pending entries (a restart resumes them) ...
        ahead: asyncio.Task[ReadBatch | None] | None = self._read_ahead(start)
        while ahead is not None:
            batch = await ahead
            if batch is None:  # stopping while Redis was unreachable
                return
            if start != ">":
                # ... page through the pending list, then new entries
                start = batch.raw[-1][0] if batch.raw else ">"
            ahead = None if self.stopping else self._read_ahead(start)
            if batch.raw:
                await self._start_batch(batch.parsed)
            self._raise_failure()
            await self._housekeeping()
        await self.finish_in_flight()

    def _read_ahead(self, start: str) -> asyncio.Task[ReadBatch | None]:
        async def read_and_parse() -> ReadBatch | None:
            raw = await self._retry_transient(lambda: self._read(start))
            return None if raw is None else ReadBatch(raw=raw, parsed=parse_batch(raw))

        return asyncio.create_task(read_and_parse(), name=f"read-{self.name}")

    async def _read(self, start: str) -> list[tuple[str, dict[str, str] | None]]:
        block = None if start != ">" else self.block_ms
        reply = await self.redis.xreadgroup(self.group, self.name, {self.keys.stream: start},
                                            count=self.batch_max, block=block)
        if not reply:
            return []
        entries: list[tuple[str, dict[str, str] | None]] = reply[0][1]
        return entries

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_EVERY_S:
            await self._side_task(self.redis.set(self.keys.consumer_heartbeat(self.name),
                                                 str(time.time()),
                                                 px=int(max(10_000, self.block_ms * 5))))
            self._last_heartbeat = now
            if self.every_second is not None:
                await self._side_task(self.every_second())
        if now - self._last_reclaim >= self.reclaim_every_s:
            self._last_reclaim = now
            await self._retry_transient(self.reclaim)

    async def handle(self, raw: Sequence[tuple[str, dict[str, str] | None]]) -> None:
        """Persist, set on the boards and acknowledge ``raw`` (entries delivered to this
        consumer), in turn with the batches in flight; returns once it is done."""
        await (await self._start_batch(parse_batch(raw)))

    async def _start_batch(self, parsed: ParsedBatch) -> asyncio.Task[None]:
        """Start ``parsed`` on its way once the bounds allow: a Postgres slot free, and
        fewer than ``in_flight + 1`` batches between read and acknowledged."""
        while len(self._batches) > self.in_flight:
            await asyncio.wait(set(self._batches), return_when=asyncio.FIRST_COMPLETED)
        await self._postgres_slots.acquire()
        try:
            task = asyncio.create_task(self._handle_parsed(parsed, self._last_batch),
                                       name=f"batch-{self.name}")
        except BaseException:
            self._postgres_slots.release()
            raise
        self._last_batch = task
        self._batches.add(task)
        task.add_done_callback(self._batch_done)
        return task

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failed is None:
            self._failed = task.exception()

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    async def finish_in_flight(self) -> None:
        """Wait until every batch read so far is on the boards and acknowledged
        (or has failed: the first failure is raised)."""
        while self._batches:
            await asyncio.wait(set(self._batches))
        self._raise_failure()

    async def _handle_parsed(self, parsed: ParsedBatch,
                             previous: asyncio.Task[None] | None = None) -> None:
        """One batch's whole way, holding a Postgres slot (taken by ``_start_batch``)
        until its transaction is over: dead letters, commit, then, once ``previous``
        (the batch read before it) is done, its step 2 (boards, XACK)."""
        try:
            for stream_id, fields, why in parsed.malformed:
                await self._retry_transient(lambda s=stream_id, f=fields, w=why:
                                            self.dead_letter(s, f, w, deliveries=1))
            persisted = await self._persist(parsed.entries) if parsed.entries else []
        finally:
            self._postgres_slots.release()
        if previous is not None:
            await previous  # its failure is this batch's too: nothing more is applied
        for each in persisted:
            applying = self._apply(each.entries, each.result, each.started)
            if each.context is None:
                await applying
            else:
                await asyncio.create_task(applying, context=each.context)

    async def _persist(self, entries: Sequence[StreamEntry]) -> list[Persisted]:
        if self.tracing is None:
            return await self._persist_batch(entries)
        # One batch serves many requests: its span links to each entry's trace.
        with inner_span(self.tracing, "persist batch", [e.traceparent for e in entries],
                        **{"scoreboard.batch.size": len(entries)}):
            return await self._persist_batch(entries)

    async def _persist_batch(self, entries: Sequence[StreamEntry]) -> list[Persisted]:
        """Commit ``entries``; returns what was committed (nothing when the batch
        stays pending), to be applied in that order."""
        started = time.perf_counter()

        async def write() -> Any:
            # Boards with windows spread each increment over their periods; the
            # definitions come from Redis (a Redis error is retried like Postgres's).
            definitions = await self.definitions.for_boards({e.board for e in entries})
            async with self.pool.acquire() as connection:
                return await persist_batch(connection, entries, self.partitions, definitions,
                                           players=self.players)

        try:
            result = await self._retry_transient(write)
        except Exception as exc:  # the data was refused, not the server
            if len(entries) > 1:
                logger.warning("batch of %d refused (%r); persisting one by one",
                               len(entries), exc)
                persisted = []
                for entry in entries:
                    persisted += await self._persist_batch([entry])
                return persisted
            logger.error("entry %s refused by Postgres: %r; left pending for retry",
                         entries[0].stream_id, exc, extra={
                             "stream_id": entries[0].stream_id,
                             "event_id": entries[0].event_id,
                             "request_id": entries[0].request_id})
            return []
        if result is None:  # stopping while the database was down: all stays pending
            return []
        if self.chaos_exit_after_commit and random.random() < self.chaos_exit_after_commit:
            # Fault injection for the chaos tests: die in the worst place.
            os._exit(CHAOS_EXIT_STATUS)
        if self.chaos_marks is not None:
            await self.chaos_marks.committed(self.keys.stream, entries)
        return [Persisted(entries=entries, result=result, started=started,
                          context=None if self.tracing is None else contextvars.copy_context())]

    async def _apply(self, entries: Sequence[StreamEntry], result: Any, started: float) -> None:
        """Fraud checks, then the boards, XACK and notices: after the commit, in that
        order (a crash before the XACK repeats both)."""
        if self.after_batch is not None:
            with inner_span(self.tracing, "fraud checks"):
                await self._side_task(self.after_batch(entries))

        async def apply() -> bool:
            # The notice carries this span's context: the snapshot links to it.
            with client_span(self.tracing, "apply_batch.lua",
                             **{"scoreboard.batch.size": len(entries)}) as traceparent:
                await apply_and_ack(self.redis, self.scripts, self.board_keys, group=self.group,
                                    totals=result.totals, ack_ids=[e.stream_id for e in entries],
                                    traceparent=traceparent, stream=self.keys.stream)
            return True

        if not await self._retry_transient(apply):  # Redis down while stopping: stays pending
            return
        if self.chaos_marks is not None:
            self.chaos_marks.acked(self.keys.stream, entries)
        PERSISTED.inc(result.inserted)
        BATCH_SIZE.observe(len(entries))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        visible_ms = time.time() * 1000
        observe_many(FRESHNESS, [max(0.0, visible_ms - entry.ts_ms) / 1000 for entry in entries])

    async def _side_task(self, work: Awaitable[Any]) -> None:
        """Run checks that ride along with persistence; their failure is logged,
        never allowed to stop persistence (the batch is already committed)."""
        try:
            await work
        except Exception:
            logger.exception("side task failed; persistence continues")

    async def _retry_transient(self, operation: Any) -> Any:
        """Run ``operation()`` until it succeeds, retrying transient failures with
        backoff. Returns None (without running again) once the consumer is stopping."""
        attempt = 0
        while True:
            try:
                return await operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                if self.stopping:
                    return None
                delay = backoff_s(attempt)
                logger.warning("transient failure (attempt %d, retry in %.1fs): %r",
                               attempt, delay, exc)
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass

    async def reclaim(self) -> int:
        """Take over entries idle past the threshold; dead-letter those delivered too often.

        Safe on several consumers at once: XAUTOCLAIM hands each entry to one.
        Returns how many entries were claimed.
        """
        start, claimed_total = "0-0", 0
        while not self.stopping:
            reply = await self.redis.xautoclaim(self.keys.stream, self.group, self.name,
                                                min_idle_time=self.claim_idle_ms,
                                                start_id=start, count=CLAIM_PAGE)
            start, claimed = reply[0], [(i, f) for i, f in reply[1] if i is not None]
            claimed_total += len(claimed)
            if claimed:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for stream_id, _ in claimed:
                        pipe.xpending_range(self.keys.stream, self.group, min=stream_id,
                                            max=stream_id, count=1)
                    pending = await pipe.execute()
                retry = []
                for (stream_id, fields), info in zip(claimed, pending, strict=True):
                    deliveries = int(info[0]["times_delivered"]) if info else 1
                    if deliveries > self.max_deliveries:
                        await self.dead_letter(stream_id, fields or {}, "delivered "
                                               f"{deliveries} times without being persisted",
                                               deliveries=deliveries)
                    else:
                        retry.append((stream_id, fields))
                if retry:
                    await self.handle(retry)
            if start in ("0-0", b"0-0"):
                return claimed_total
        return claimed_total

    async def dead_letter(self, stream_id: str, fields: dict[str, str], reason: str, *,
                          deliveries: int) -> None:
        """Move an entry to the dead-letter stream with why, and acknowledge it.

        Both keys are in the stream's slot; on a cluster there is no MULTI, so a
        crash between the two can leave the entry dead-lettered and still pending
        (it is dead-lettered again: two dead letters, still nothing persisted)."""
        async with self.redis.pipeline(transaction=not is_cluster(self.redis)) as pipe:
            pipe.xadd(self.keys.dead_letters, {**fields, "original_id": stream_id,
                                               "reason": reason, "deliveries": deliveries,
                                               "consumer": self.name})
            pipe.xack(self.keys.stream, self.group, stream_id)
            await pipe.execute()
        DEAD_LETTERED.labels(reason.split(":")[0].split(" ")[0]).inc()
        logger.error("dead-lettered %s after %d deliveries: %s", stream_id, deliveries, reason,
                     extra={"stream_id": stream_id, "event_id": fields.get("event_id"),
                            "request_id": fields.get("request_id"), "fields": fields})

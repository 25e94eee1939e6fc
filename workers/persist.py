"""One batch of stream entries into Postgres, in one transaction.

ONE statement, the batch's columns passed one text each: the events new to
``counted_events`` (the durable dedup record, keyed by source and event id)
become ``actions`` rows, and only rows really inserted are summed into
``scores``. Alone (no player to write) it is its own implicit transaction:
one round trip and one commit, where BEGIN, a staging table, a binary COPY
into it, the statement and COMMIT were five round trips and staging rows
written only to be read once. Measured, that was not where a batch's time
goes (the rows are: BENCHMARKS.md, "Worker"); it is kept as the simpler
path.

A redelivered entry, or an event accepted again once its Redis marker is
gone, is already counted and adds nothing. The committed
totals of every (board, user) the batch touched are returned, inserted or
not: after a crash between commit and acknowledgement, the redelivery must
still bring the leaderboard up to the committed totals.

Players (``users`` rows of a backend's players, and the names the boards
show) are written only when this process does not know them yet or a batch
brings a new name (``workers.players``), in one explicit transaction with
the statement; most batches of a running worker write none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from scoreboard.board_defs import BoardDefinition
from scoreboard.board_writes import BoardTotal
from scoreboard.stream_entry import StreamEntry
from workers.batching import months_of
from workers.persist_sql import COUNTED, STAGED, SUM_INTO_SCORES, TOTALS_OF_UNCHANGED, staged
from workers.players import KnownPlayers, requested_names
from workers.window_fanout import PERSIST_WINDOWED, window_arrays

# The players a batch must write (``KnownPlayers.to_write``): new ones are
# inserted with DO NOTHING, and only names that changed are updated (an ON
# CONFLICT DO UPDATE would lock and WAL-log every existing row even when its
# WHERE updates nothing); registered accounts keep their own name. Returns
# each player's row as it now stands: (user id, name, registered). A player
# another transaction inserted after this statement's snapshot is in none of
# the three parts (the caller reads those again; see ``write_players``).
WRITE_PLAYERS = """
WITH requested AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS r(user_id, username)
), created AS (
    INSERT INTO users (user_id, username)
    SELECT user_id, username FROM requested ORDER BY user_id
    ON CONFLICT (user_id) DO NOTHING
    RETURNING user_id, username
), renamed AS (
    UPDATE users SET username = r.username
    FROM requested r
    WHERE users.user_id = r.user_id AND users.password_hash IS NULL
      AND users.username <> r.username AND r.username <> r.user_id
    RETURNING users.user_id, users.username
)
SELECT user_id, username, false AS registered FROM created
UNION ALL
SELECT user_id, username, false FROM renamed
UNION ALL
SELECT u.user_id, u.username, u.password_hash IS NOT NULL
FROM requested r JOIN users u USING (user_id)
WHERE NOT EXISTS (SELECT FROM created c WHERE c.user_id = r.user_id)
  AND NOT EXISTS (SELECT FROM renamed n WHERE n.user_id = r.user_id)
"""
READ_PLAYERS = """
SELECT user_id, username, password_hash IS NOT NULL AS registered
FROM users WHERE user_id = ANY($1::text[])
"""

# The batch in one statement: one round trip, and with nothing else to write one
# implicit transaction of its own (see ``persist_batch``). The shared parts
# (``workers.persist_sql``) say what each step does: the batch's rows come in
# as one text per column, the earliest copy of each event is counted once forever in
# ``counted_events``, only counted events become ``actions`` rows and points,
# and the totals of every (board, user) the batch touched come back (with
# how many ``actions`` rows it inserted).
PERSIST = f"""
WITH {STAGED}, {COUNTED}, upserted AS ({SUM_INTO_SCORES.format(rows="inserted")}),
{TOTALS_OF_UNCHANGED}
"""


@dataclass(frozen=True)
class PersistResult:
    inserted: int
    totals: list[BoardTotal]


class PartitionCache:
    """Months whose ``actions`` partition this process has made sure exists."""

    def __init__(self) -> None:
        self.known: set[date] = set()

    async def ensure(self, connection: Any, months: set[date]) -> None:
        for month in sorted(months - self.known):
            await connection.execute("SELECT ensure_actions_partitions($1, 1)", month)
            self.known.add(month)


async def write_players(connection: Any, writes: dict[str, str]) -> list[tuple[str, str, bool]]:
    """Write ``writes`` (player id -> requested name); returns every one's row as
    it now stands: (player id, name, registered)."""
    rows = [(r["user_id"], r["username"], r["registered"]) for r in await connection.fetch(
        WRITE_PLAYERS, list(writes), list(writes.values()))]
    if len(rows) < len(writes):  # inserted by a transaction committed since the snapshot
        missing = set(writes) - {user_id for user_id, _, _ in rows}
        rows += [(r["user_id"], r["username"], r["registered"]) for r in await connection.fetch(
            READ_PLAYERS, sorted(missing))]
    return rows


async def persist_batch(connection: Any, entries: Sequence[StreamEntry],
                        partitions: PartitionCache,
                        definitions: Mapping[str, BoardDefinition] | None = None, *,
                        players: KnownPlayers | None = None) -> PersistResult:
    """Write ``entries`` in one transaction; returns what was inserted and the totals.

    ``players``: the process's :class:`KnownPlayers` (without one, every player
    of the batch is written). It learns only once the transaction committed.
    A missing partition is created first (in its own short transaction, so the
    batch never waits on another worker's partition lock while holding rows).
    ``definitions`` (board -> definition) spreads the entries of boards with
    windows or the ``best`` operator over their scopes (``workers.window_fanout``);
    a batch of plain boards only runs exactly what it ran before windows.
    """
    known = players if players is not None else KnownPlayers()
    await partitions.ensure(connection, months_of(entries))
    requested = requested_names(entries)
    writes = known.to_write(requested)
    names = {user_id: known.name(user_id) or name for user_id, name in requested.items()
             if user_id not in writes}
    columns = staged(entries)
    windowed = window_arrays(entries, definitions) if definitions else None
    statement, arguments = (PERSIST, columns) if windowed is None else (
        PERSIST_WINDOWED, (*columns, *windowed))
    written: list[tuple[str, str, bool]] = []
    if writes:
        async with connection.transaction():
            written = await write_players(connection, writes)
            rows = await connection.fetch(statement, *arguments)
    else:
        # One statement is one transaction: atomic on its own, and one round trip
        # (BEGIN and COMMIT would each be another).
        rows = await connection.fetch(statement, *arguments)
    known.learn(written)
    names.update((user_id, name) for user_id, name, _ in written)
    return PersistResult(inserted=rows[0]["inserted_rows"] if rows else 0, totals=[
        BoardTotal(board=r["board"], user_id=r["user_id"], score=r["score"],
                   reached_at=r["reached_at"], version=r["version"],
                   username=names.get(r["user_id"]) or requested[r["user_id"]])
        for r in rows])

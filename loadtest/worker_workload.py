"""The worker benchmark's workload: N stream entries, generated once from a seed,
XADDed before any consumer starts, and how far a group has acknowledged them.

Kept apart from ``loadtest.bench_worker`` so that its report and checks
(``loadtest.worker_report``) read the same entries.
"""

from __future__ import annotations

import random
import secrets
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scoreboard.keys import Keys
from scoreboard.stream_entry import StreamEntry, pack_context, pack_item, parse_entry
from scoreboard.stream_trim import stream_id_key

GROUP = "persisters"
BOARDS = ("global", "weekly")


# --- The workload: N entries, generated once, reproducible from the seed ----------------


@dataclass
class Workload:
    """Who scores what, as compact columns; ``fields(i)`` builds entry ``i``.

    Kept as columns rather than N dicts so that 10^6 entries stay cheap to
    hold, and the same entries can be XADDed twice and COPYed once.
    """

    run_id: str
    ts_ms: int
    user_of: list[int]
    board_of: list[int]
    points_of: list[int]

    @classmethod
    def generate(cls, *, entries: int, users: int, seed: int, at_ms: int) -> Workload:
        rng = random.Random(seed)
        return cls(run_id=secrets.token_hex(4), ts_ms=at_ms,
                   user_of=[rng.randrange(users) for _ in range(entries)],
                   board_of=[rng.randrange(len(BOARDS)) for _ in range(entries)],
                   points_of=[rng.randint(1, 10) for _ in range(entries)])

    def __len__(self) -> int:
        return len(self.user_of)

    def fields(self, index: int) -> dict[str, str]:
        """Entry ``index`` as a game backend's batch puts it in the stream (the packed
        form ``lua/batch.lua`` writes): ten entries per ms (the backlog of a busy
        ingest), one request per 100."""
        user = self.user_of[index]
        return {"item": pack_item(f"bench-{self.run_id}-{index}", f"player-{user:05d}",
                                  BOARDS[self.board_of[index]], self.points_of[index],
                                  f"Player {user}"),
                "context": pack_context("backend:bench-worker", self.ts_ms + index // 10,
                                        "127.0.0.1", f"req-{self.run_id}-{index // 100}")}

    def expected_totals(self) -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = {}
        for user, board, points in zip(self.user_of, self.board_of, self.points_of,
                                       strict=True):
            key = (BOARDS[board], f"player-{user:05d}")
            totals[key] = totals.get(key, 0) + points
        return totals

    def entries(self, ids: Sequence[str], start: int, stop: int) -> list[StreamEntry]:
        """Parsed entries ``start..stop``, exactly as the consumer parses them."""
        return [parse_entry(ids[i], self.fields(i)) for i in range(start, stop)]


def prefill(client: Any, keys: Keys, workload: Workload, chunk: int = 1000) -> tuple[
        list[str], float]:
    """XADD every entry (pipelines of ``chunk``) and create the group at id 0,
    as the worker would; returns the stream ids and the seconds it took."""
    ids: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(workload), chunk):
        with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(len(workload), start + chunk)):
                pipe.xadd(keys.stream, workload.fields(index))
            ids.extend(pipe.execute())
    elapsed = time.perf_counter() - started
    client.xgroup_create(keys.stream, GROUP, id="0")
    return ids, elapsed


class Progress:
    """Entries the group has acknowledged, from XINFO GROUPS alone.

    Redis 6.2 (the embedded one) has no ``entries-read``, so the delivered
    count is the rank of ``last-delivered-id`` among the ids we added;
    acknowledged = delivered - pending. (Dead-lettered entries are
    acknowledged too; the check at the end requires there are none.)
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.sorted_ids = [stream_id_key(i) for i in ids]

    def acknowledged(self, groups: Sequence[dict[str, Any]]) -> int:
        group = next((g for g in groups if g["name"] == GROUP), None)
        if group is None:
            return 0
        delivered = bisect_right(self.sorted_ids, stream_id_key(group["last-delivered-id"]))
        return delivered - int(group["pending"])

"""Idempotency marks of accepted event ids in Redis: the Python side of
``lua/lib/marks.lua``.

An accepted event id is marked so that the same id sent again (a retry, a
replay) is answered as a duplicate instead of counted. Redis keeps a mark for
a short window only (``DEDUP_TTL_S``); beyond it ``counted_events`` in
Postgres still counts each event once (workers/persist.py), the mark only
makes the answer say so.

A source's marks are members of SETs, one per window of ``DEDUP_TTL_S``
(``Keys.event_marks(source)`` followed by the window's number); a mark is
looked up in the current window and the one before, and a window's SET
expires when the window after it ends: a mark is known for at least the TTL
and forgotten within twice it. One SET per window rather than a key with its
own expiry per event id: a batch marks its increments with one SADD instead
of a thousand ``SET ... PX``, which were about half of Redis's cost per
increment, and a member costs Redis less memory than a key with an expiry
(BENCHMARKS.md, "Ingest"). A window's SET is large at high rates: Redis frees
it in the background when ``lazyfree-lazy-expire`` is on (the embedded Redis
sets it; README, "Guarantees and where they come from").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def mark_windows(prefix: str, now_ms: int, ttl_ms: int) -> tuple[str, str]:
    """The SETs a mark made at ``now_ms`` is looked up in: the current window's and
    the previous one's (as ``mark_windows`` in ``lua/lib/marks.lua``)."""
    window = now_ms // ttl_ms
    return f"{prefix}{window}", f"{prefix}{window - 1}"


async def marked(client: Any, prefix: str, event_ids: Sequence[str], *, now_ms: int,
                 ttl_ms: int) -> list[bool]:
    """Whether each of ``event_ids`` is marked (one pipeline, two SMISMEMBER).

    ``now_ms`` is this host's clock where the scripts read Redis's. Ahead of
    Redis's, a mark is still found (the previous window is looked up too); behind
    it by d ms, a mark made in the first d ms of a window is missed until this
    clock passes the window's edge too. The callers look up marks made long
    before (an expired token's retry) or send on to a script that checks again
    (the sharded batch's count of new ids only sizes the limit's check)."""
    if not event_ids:
        return []
    current, previous = mark_windows(prefix, now_ms, ttl_ms)
    async with client.pipeline(transaction=False) as pipe:
        pipe.smismember(current, list(event_ids))
        pipe.smismember(previous, list(event_ids))
        in_current, in_previous = await pipe.execute()
    return [bool(int(a)) or bool(int(b)) for a, b in zip(in_current, in_previous, strict=True)]

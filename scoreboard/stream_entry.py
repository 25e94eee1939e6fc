"""The stream entry: what ingest XADDs and workers persist.

Written by ``lua/increment.lua`` and ``lua/batch.lua`` with these fields, all
strings (Redis stream values):

| field      | meaning                                                          |
| ---        | ---                                                              |
| event_id   | idempotency key; with ``ts`` the primary key of the action row   |
| user_id    | the player credited                                              |
| username   | display name at the time (may be empty: keep the known one)      |
| board      | leaderboard name                                                 |
| points     | positive integer                                                 |
| source     | ``player`` (increment endpoint) or ``backend:<client id>`` (batch) |
| ts         | acceptance time, ms since the epoch, from Redis ``TIME``; the row's ``created_at`` |
| ip         | client address as ingest saw it (after trusted proxies)          |
| request_id | the ingest request's id, for tracing a row back to its log line  |
| traceparent | optional: W3C trace context of the ingest span that wrote it (tracing on) |

``lua/batch.lua`` and ``lua/increment.lua`` write the same fields packed, since
Redis's cost per field bounds how many increments one Redis core accepts: ``item`` is
``event_id``, ``user_id``, ``board``, ``points``, ``username`` and ``context``
is ``source``, ``ts``, ``ip``, ``request_id`` (what every entry of one batch
shares), each joined by ``SEPARATOR`` (a control character, which no field can
hold: ingest refuses them in names, and ids, boards and addresses have
narrower alphabets), plus ``traceparent`` as above. An entry whose field holds
the separator anyway (a plain one made by hand) is malformed: the worker passes
each column of a batch to Postgres joined by it (``workers.persist_sql``).
:func:`parse_entry` reads both forms (the plain one is what scripts before the
packed form wrote, and what tests and tools may still add); :func:`pack_item`
makes the item, so the two sides agree.

A worker takes an action's time from ``ts``, never from its own clock, so a
redelivered entry lands in the same partition with the same key.
"""

from __future__ import annotations

from operator import itemgetter
from typing import NamedTuple

FIELDS = ("event_id", "user_id", "username", "board", "points", "source", "ts", "ip",
          "request_id")
_PLAIN_FIELDS = itemgetter(*FIELDS)
SEPARATOR = "\x1f"  # ASCII unit separator
ITEM_FIELDS = ("event_id", "user_id", "board", "points", "username")  # username last: free text
CONTEXT_FIELDS = ("source", "ts", "ip", "request_id")


def pack_item(event_id: str, user_id: str, board: str, points: int, username: str) -> str:
    """One increment as ``lua/batch.lua`` takes it and writes it (field ``item``)."""
    return f"{event_id}\x1f{user_id}\x1f{board}\x1f{points}\x1f{username}"


def pack_context(source: str, ts_ms: int, ip: str, request_id: str) -> str:
    """What every entry of one batch shares, as ``lua/batch.lua`` writes it (field
    ``context``)."""
    return f"{source}\x1f{ts_ms}\x1f{ip}\x1f{request_id}"


def unpacked(fields: dict[str, str]) -> dict[str, str]:
    """The fields of a packed entry (``item``, ``context``) as separate ones; an entry
    of the plain form as it is. ``ValueError`` when a packed field has too few parts."""
    if "item" not in fields:
        return fields
    item, context = _packed_parts(fields)
    plain = dict(zip(ITEM_FIELDS, item, strict=True))
    plain.update(zip(CONTEXT_FIELDS, context, strict=True))
    if "traceparent" in fields:
        plain["traceparent"] = fields["traceparent"]
    return plain


def _packed_parts(fields: dict[str, str]) -> tuple[list[str], list[str]]:
    item = fields["item"].split(SEPARATOR)
    context = fields.get("context", "").split(SEPARATOR)
    if len(item) < len(ITEM_FIELDS) or len(context) < len(CONTEXT_FIELDS):
        raise ValueError("packed item or context has too few parts")
    if len(item) > len(ITEM_FIELDS) or len(context) > len(CONTEXT_FIELDS):
        raise ValueError("a field holds the separator")
    return item, context


class StreamEntry(NamedTuple):
    """One parsed entry. A named tuple rather than a frozen dataclass: the worker
    builds one per entry, and a frozen dataclass's ``__init__`` cost 2.5 times as
    much (about 3 µs of the 7 µs an entry took to parse)."""

    stream_id: str
    event_id: str
    user_id: str
    username: str
    board: str
    points: int
    source: str
    ts_ms: int
    ip: str
    request_id: str
    traceparent: str = ""


def parse_entry(stream_id: str, fields: dict[str, str]) -> StreamEntry:
    """Build an entry from its stream fields (either form); ``ValueError`` names what
    is wrong. A packed entry is split straight into the entry, not through
    :func:`unpacked`'s dict: a worker parses a thousand of them per batch."""
    if "item" in fields:
        item, context = _packed_parts(fields)
        event_id, user_id, board, points, username = item
        source, ts, ip, request_id = context
    else:
        try:
            event_id, user_id, username, board, points, source, ts, ip, request_id = (
                _PLAIN_FIELDS(fields))
        except KeyError:
            missing = [name for name in FIELDS if name not in fields]
            raise ValueError(f"missing fields: {', '.join(missing)}") from None
        if SEPARATOR in "".join((event_id, user_id, board, source, ip, request_id)):
            raise ValueError("a field holds the separator")
    if not (event_id and user_id and board and source):
        raise ValueError("event_id, user_id, board and source must not be empty")
    try:
        entry = StreamEntry(stream_id, event_id, user_id, username, board, int(points),
                            source, int(ts), ip, request_id, fields.get("traceparent", ""))
    except ValueError:
        raise ValueError("points and ts must be integers") from None
    if entry.points <= 0:
        raise ValueError("points must be positive")
    return entry

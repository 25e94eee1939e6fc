"""The worker's share of fraud detection.

- :meth:`FraudChecks.record_decisions`: decisions the Lua scripts took inline
  (rapid actions flag, token-manipulation ban or address limit) arrive on the
  fraud stream; each becomes a ``fraud_events`` row (idempotent on its stream
  id) and, for flags and bans, a ``user_restrictions`` row; a ban also takes
  the user off every board.
- :meth:`FraudChecks.check_batch`: per persisted batch, the unusual-time rule
  (logged, never blocking; once per user per local day), points per action
  beyond a board's plausible maximum (flagged for review), and, over players'
  own increments only, cadence regularity (the gaps between a user's last
  actions vary too little: a script) and farms (too many accounts accepted
  from one address): both flag, through ``lua/flag_users.lua``, which records
  the decision on the fraud stream like the inline rules.
- :func:`score_velocity`: the hourly job comparing each user's points in the
  last hour with their own hourly history (z-score).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis.exceptions

from scoreboard.fraud_rules import (
    farm_accounts,
    is_night,
    over_board_max,
    regular_cadence,
    tireless,
    top_action_run,
    velocity_zscore,
)
from scoreboard.keys import Keys
from scoreboard.ladder import climb, close_expired, insert_restriction
from scoreboard.metrics import count_fraud_event
from scoreboard.moderation import Moderation
from scoreboard.settings import TIRELESS_SPAN_HOURS, Settings
from scoreboard.stream_entry import StreamEntry

logger = logging.getLogger(__name__)

RECORDER_GROUP = "fraud-recorders"
BOARD_LIMITS_TTL_S = 60.0
VELOCITY_HISTORY_HOURS = 24
ACTIVITY_CHUNK = 250  # entries per fraud_batch.lua call: bounds how long Redis is held


class FraudChecks:
    def __init__(self, moderation: Moderation, settings: Settings, *, consumer: str) -> None:
        self.moderation = moderation
        self.settings = settings
        self.consumer = consumer
        self._board_limits: dict[str, int | None] = {}
        self._board_tops: dict[str, int] = {}
        self._board_limits_at = 0.0

    @property
    def keys(self) -> Keys:
        return self.moderation.keys

    async def record_decisions(self) -> int:
        """Record what the scripts decided since last time, from every shard's fraud
        stream (one unsharded); returns how many."""
        client, recorded = self.moderation.redis, 0
        for shard_keys in self.keys.every_shard:
            fraud_stream = shard_keys.fraud_stream
            try:
                await client.xgroup_create(fraud_stream, RECORDER_GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            for start in ("0", ">"):  # our pending ones first (a crash mid-way), then new
                reply = await client.xreadgroup(RECORDER_GROUP, self.consumer,
                                                {fraud_stream: start}, count=100)
                for stream_id, fields in (reply[0][1] if reply else []):
                    if fields:
                        await self._record(self._event_key(shard_keys, stream_id), fields)
                    await client.xack(fraud_stream, RECORDER_GROUP, stream_id)
                    recorded += 1
        await self.expire_restrictions()
        return recorded

    def _event_key(self, shard_keys: Keys, stream_id: str) -> str:
        """The ``fraud_events`` key of a decision: its stream id, prefixed by its
        shard's tag when sharded (ids of two shards' streams can be equal)."""
        return f"{shard_keys.tag}:{stream_id}" if self.keys.sharded else stream_id

    async def _record(self, stream_id: str, fields: dict[str, str]) -> None:
        """One decision of a script: its ``fraud_events`` row, and for a flag (an
        offence) the rung of the ladder it earns (scoreboard/ladder.py): the flag
        itself, a temporary ban or a ban, each with its ``user_restrictions`` row."""
        user_id = fields.get("user_id") or None
        action = fields["action"]
        evidence = orjson.loads(fields.get("evidence") or "{}")
        settings, moderation = self.settings, self.moderation
        banned_until: datetime | None = None
        banned = False
        async with moderation.pool.acquire() as connection, connection.transaction():
            if await connection.fetchval("SELECT 1 FROM fraud_events WHERE event_key = $1",
                                         stream_id):
                return  # recorded already (a redelivery after a crash)
            if user_id and action in ("flagged", "banned"):
                expires = None
                if fields.get("expires_ms"):
                    expires = datetime.fromtimestamp(int(fields["expires_ms"]) / 1000, UTC)
                action, rung, expires = await climb(
                    connection, user_id, flag_s=settings.flag_duration_s,
                    temp_ban_s=settings.temp_ban_s, window_s=settings.offence_window_s,
                    flag_expires=expires if action == "flagged" else None)
                evidence = {**evidence, "rung": rung}
                await insert_restriction(connection, user_id=user_id, kind=action,
                                         reason=fields["rule"], expires=expires, level=rung)
                banned, banned_until = action == "banned", expires
            await moderation.record_event(
                connection, user_id=user_id, rule=fields["rule"], severity=fields["severity"],
                action=action, evidence=evidence, client_addr=fields.get("client_addr") or None,
                event_key=stream_id)
        if user_id and banned:
            ttl_ms = None
            if banned_until is not None:
                ttl_ms = max(1, int((banned_until - datetime.now(UTC)).total_seconds() * 1000))
            await moderation.redis.set(moderation.key_of("banned", user_id), fields["rule"],
                                       px=ttl_ms)
            await moderation.hide_everywhere(user_id)

    async def expire_restrictions(self) -> int:
        """Close the restrictions whose end has passed; a ban that ended puts the
        user back on every board at once (not at their next increment). Returns
        how many ended."""
        moderation = self.moderation
        async with moderation.pool.acquire() as connection:
            ended = await close_expired(connection)
        for user_id, kind in ended:
            if kind in ("banned", "shadow_banned"):
                # Postgres says it ended: so does Redis (the key's own expiry may lag)
                await moderation.redis.delete(moderation.key_of(kind, user_id))
                if not await moderation.redis.exists(moderation.key_of("banned", user_id),
                                                     moderation.key_of("shadow_banned", user_id)):
                    await moderation.show_everywhere(user_id)
        return len(ended)

    async def _board_maximums(self) -> dict[str, int | None]:
        if time.monotonic() - self._board_limits_at > BOARD_LIMITS_TTL_S:
            rows = await self.moderation.pool.fetch(
                "SELECT board, max_points_per_action, actions FROM boards")
            self._board_limits = {r["board"]: r["max_points_per_action"] for r in rows}
            self._board_tops = {r["board"]: top for r in rows
                                if (top := top_price(r["actions"])) is not None}
            self._board_limits_at = time.monotonic()
        return self._board_limits

    async def check_batch(self, entries: Sequence[StreamEntry]) -> None:
        """The per-batch rules. Runs after the batch is committed and before it is
        acknowledged, so a crash repeats it; every row has a key, so a repeat
        records nothing twice."""
        settings = self.settings
        maximums = await self._board_maximums()
        events: dict[str, tuple[StreamEntry, str, str, str, dict[str, Any]]] = {}
        # Judged once per minute of accept time, not per entry: the window's
        # edges are whole local hours and zones are offset by whole minutes.
        night_by_minute: dict[int, bool] = {}
        for entry in entries:
            minute = entry.ts_ms // 60_000
            at_night = night_by_minute.get(minute)
            if at_night is None:
                at_night = night_by_minute[minute] = is_night(
                    entry.ts_ms, timezone=settings.fraud_timezone,
                    start_hour=settings.night_start_hour, end_hour=settings.night_end_hour)
            if at_night:
                day = datetime.fromtimestamp(entry.ts_ms / 1000, UTC).date().isoformat()
                events.setdefault(f"unusual_time:{entry.user_id}:{day}", (
                    entry, "unusual_time", "medium", "logged",
                    {"ts_ms": entry.ts_ms, "timezone": settings.fraud_timezone}))
            board_max = maximums.get(entry.board)
            if over_board_max(entry.points, board_max):
                events[f"points_per_action:{entry.event_id}"] = (
                    entry, "points_per_action", "high", "review",
                    {"points": entry.points, "board_max": board_max,
                     "event_id": entry.event_id})
        await self._record_events(events)
        # A game backend's batch is its own server's doing: its timing and its
        # address say nothing about one player.
        players = [entry for entry in entries if entry.source == "player"]
        for chunk in range(0, len(players), ACTIVITY_CHUNK):
            await self._check_activity(players[chunk:chunk + ACTIVITY_CHUNK])

    async def _check_activity(self, entries: Sequence[StreamEntry]) -> None:
        """The cadence, farm, tireless and top-action rules over ``entries``: one
        ``lua/fraud_batch.lua`` call keeps their state in Redis and returns it, the
        judgement is :func:`regular_cadence`, :func:`farm_accounts`,
        :func:`tireless` and :func:`top_action_run`, and the flags go through
        ``lua/flag_users.lua``."""
        settings, keys = self.settings, self.keys
        keep, min_accounts = settings.cadence_actions, settings.farm_min_accounts
        by_user: dict[str, list[StreamEntry]] = {}
        by_address: dict[str, dict[str, int]] = {}
        counts: dict[str, Counter[str]] = {}
        for entry in entries:
            if keep or settings.tireless_hours or settings.top_action_run:
                by_user.setdefault(entry.user_id, []).append(entry)
            if min_accounts and entry.ip:
                seen = by_address.setdefault(entry.ip, {})
                seen[entry.user_id] = max(seen.get(entry.user_id, 0), entry.ts_ms)
                counts.setdefault(entry.ip, Counter())[entry.user_id] += 1
        if not by_user and not by_address:
            return
        cadence_ms, farm_ms = settings.cadence_window_s * 1000, settings.farm_window_s * 1000
        users, addresses = list(by_user), list(by_address)
        hour_ms = settings.activity_hour_s * 1000
        data = {"keep": keep, "cadence_ttl": cadence_ms, "window": farm_ms,
                "min_accounts": min_accounts,
                "users": [sorted(e.ts_ms for e in own) for own in by_user.values()],
                "hours": [sorted({e.ts_ms // hour_ms for e in own}) for own in by_user.values()],
                "tireless": settings.tireless_hours, "span": TIRELESS_SPAN_HOURS,
                "hour_ms": hour_ms,
                # a board with one price has no top action to prefer: never counted
                "top": [[[e.ts_ms, int(e.points == self._board_tops.get(e.board, 0))]
                         for e in sorted(own, key=lambda e: e.ts_ms)]
                        for own in by_user.values()],
                "top_run": settings.top_action_run,
                "top_ttl": TIRELESS_SPAN_HOURS * hour_ms,
                "addresses": [[max(seen.values()), [[ts, user] for user, ts in seen.items()],
                               [[user, n] for user, n in counts[address].items()]]
                              for address, seen in by_address.items()]}
        newest = max(entry.ts_ms for entry in entries)
        cadence, farms, hours, tops = await self.moderation.scripts.fraud_batch(
            keys, users=users, addresses=addresses, window_index=newest // farm_ms, data=data)
        regular = []
        for index, times in cadence:
            cv = regular_cadence(times, actions=keep, window_ms=cadence_ms,
                                 max_cv=settings.cadence_max_cv,
                                 max_multiple=settings.cadence_max_multiple)
            if cv is not None:
                user_id = users[index]
                regular.append((user_id, by_user[user_id][-1].ip, {
                    "cv": round(cv, 5), "actions": len(times),
                    "mean_gap_ms": round((times[-1] - times[0]) / (len(times) - 1)),
                    "max_cv": settings.cadence_max_cv}))
        await self._flag("cadence_regularity", regular)
        farmed = []
        for index, last_seen, accepts in farms:
            address = addresses[index]
            accounts = farm_accounts(last_seen, accepts, now_ms=max(by_address[address].values()),
                                     window_ms=farm_ms, min_accounts=min_accounts,
                                     busy_actions=settings.farm_busy_actions,
                                     busy_share=settings.farm_busy_share)
            evidence = {"address": address, "accounts": len(accounts),
                        "active_accounts": len(last_seen),
                        "window_s": settings.farm_window_s, "sample": accounts[:10]}
            farmed += [(user_id, address, evidence) for user_id in accounts]
        await self._flag("farm", farmed)
        tired = []
        for index, active in hours:
            count = tireless(active, span=TIRELESS_SPAN_HOURS, threshold=settings.tireless_hours)
            if count is not None:
                user_id = users[index]
                tired.append((user_id, by_user[user_id][-1].ip, {
                    "active_hours": count, "of_hours": TIRELESS_SPAN_HOURS,
                    "hour_s": settings.activity_hour_s}))
        await self._flag("tireless", tired)
        greedy = []
        for index, run in tops:
            if top_action_run(run, threshold=settings.top_action_run) is not None:
                user_id = users[index]
                last = by_user[user_id][-1]
                greedy.append((user_id, last.ip, {
                    "run": run, "board": last.board, "points": last.points,
                    "threshold": settings.top_action_run}))
        await self._flag("top_action", greedy)

    async def _flag(self, rule: str, decisions: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Flag ``(user id, address, evidence)`` through ``lua/flag_users.lua`` (skips
        users already flagged or banned); the recorder writes the rows."""
        if not decisions:
            return
        flagged = await self.moderation.scripts.flag_users(
            self.keys, rule=rule, severity="high",
            flag_duration_ms=self.settings.flag_duration_s * 1000,
            decisions=[(user_id, address, orjson.dumps(evidence).decode())
                       for user_id, address, evidence in decisions])
        if flagged:
            logger.info("%s flagged %d user(s)", rule, len(flagged))

    async def _record_events(
            self, events: dict[str, tuple[StreamEntry, str, str, str, dict[str, Any]]]) -> None:
        """All of a batch's rows in one statement (one commit, whatever the batch)."""
        if not events:
            return
        values = list(events.values())
        inserted = await self.moderation.pool.fetch(
            "INSERT INTO fraud_events (event_key, user_id, client_addr, rule, severity, action,"
            " evidence) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::text[], $6::text[], $7::jsonb[])"
            " ON CONFLICT (event_key) WHERE event_key IS NOT NULL DO NOTHING"
            " RETURNING rule, severity",
            list(events), [e.user_id for e, *_ in values], [e.ip or None for e, *_ in values],
            [v[1] for v in values], [v[2] for v in values], [v[3] for v in values],
            [v[4] for v in values])
        for row in inserted:
            count_fraud_event(row["rule"], row["severity"])


def top_price(actions: Any) -> int | None:
    """A board's top price from its ``actions`` column (JSON text or a list of
    ``{"name", "points"}``), when the board has more than one price; else None."""
    listed = orjson.loads(actions) if isinstance(actions, str | bytes) else actions
    prices = {int(action["points"]) for action in listed or []}
    return max(prices) if len(prices) > 1 else None


VELOCITY_QUERY = """
WITH hourly AS (
    SELECT user_id, date_trunc('hour', created_at) AS hour, sum(points) AS points
    FROM actions
    WHERE created_at >= $1::timestamptz - make_interval(hours => $2)
      AND created_at < $1::timestamptz + interval '1 hour'
    GROUP BY user_id, date_trunc('hour', created_at)
)
SELECT user_id,
       coalesce(sum(points) FILTER (WHERE hour = $1::timestamptz), 0) AS current,
       array_agg(points ORDER BY hour) FILTER (WHERE hour < $1::timestamptz) AS history
FROM hourly GROUP BY user_id
HAVING bool_or(hour = $1::timestamptz)
"""


async def score_velocity(moderation: Moderation, settings: Settings, *,
                         hour: datetime | None = None) -> list[str]:
    """Flag for review every user whose points in ``hour`` (default: the last
    complete hour) are beyond the z-score threshold of their own history.
    Hours without actions count as zero. Returns the users flagged."""
    if hour is None:
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    rows = await moderation.pool.fetch(VELOCITY_QUERY, hour, VELOCITY_HISTORY_HOURS)
    flagged = []
    for row in rows:
        active_hours = row["history"] or []
        # hours with no actions are zeros, from the user's first active hour on
        zeros = 0
        if active_hours:
            first = await moderation.pool.fetchval(
                "SELECT date_trunc('hour', min(created_at)) FROM actions WHERE user_id = $1"
                " AND created_at >= $2::timestamptz - make_interval(hours => $3)",
                row["user_id"], hour, VELOCITY_HISTORY_HOURS)
            span = int((hour - first).total_seconds() // 3600)
            zeros = max(0, span - len(active_hours))
        history = [int(p) for p in active_hours] + [0] * zeros
        z = velocity_zscore(history, int(row["current"]),
                            min_history=settings.velocity_min_history_hours)
        if z is not None and z > settings.velocity_z_threshold:
            async with moderation.pool.acquire() as connection:
                await moderation.record_event(
                    connection, user_id=row["user_id"], rule="score_velocity", severity="high",
                    action="review",
                    evidence={"hour": hour.isoformat(), "points": int(row["current"]),
                              "z": round(z, 2), "history_hours": len(history)},
                    event_key=f"score_velocity:{row['user_id']}:{hour.isoformat()}")
            flagged.append(row["user_id"])
    return flagged

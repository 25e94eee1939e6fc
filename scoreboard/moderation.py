"""Flags, bans, shadow-bans and removing an action: Postgres first, then Redis.

Postgres (``user_restrictions``, ``fraud_events``) is the durable record;
Redis keys are what the hot path reads, restored from Postgres by
:func:`restore_restrictions`. A ban or shadow-ban takes the user off every
board at once (spectators get the new board through the usual change
notice); lifting it puts the user back with their committed totals. Windows'
periods are boards here too; archived periods are frozen (their Redis keys
are not recreated; reads filter bans at read time; see scoreboard/archives.py).
Shared by the admin command, the worker's fraud recorder and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from scoreboard.archives import NOT_ARCHIVED
from scoreboard.board_defs import load_board
from scoreboard.board_writes import BoardTotal, set_totals_in
from scoreboard.keys import Keys
from scoreboard.ladder import insert_restriction
from scoreboard.lua import Scripts
from scoreboard.metrics import count_fraud_event
from scoreboard.redis_clients import is_cluster, publish
from scoreboard.window_moderation import correct_scopes

KINDS = ("flagged", "banned", "shadow_banned")
SERVICE_MAX_UNUSED = 2**31 - 1  # a definition's max points plays no part in moderation
# The counted events of ``$1`` (of source ``$2``, or any) whose action is still
# there: ``counted_events``' key finds them by event id (``actions`` has no key
# of its own, migration 010) and gives each action's acceptance time, which
# prunes ``actions`` to one partition.
FIND_ACTION = """
SELECT c.source, c.created_at FROM counted_events c
WHERE c.event_id = $1 AND ($2::text IS NULL OR c.source = $2)
  AND EXISTS (SELECT FROM actions a WHERE a.created_at = c.created_at
              AND a.event_id = c.event_id AND a.source = c.source)
ORDER BY c.source
"""


class AmbiguousAction(Exception):
    """An event id that several sources used, named without its source."""

    def __init__(self, event_id: str, sources: list[str]) -> None:
        super().__init__(f"event id {event_id!r} was used by {len(sources)} sources"
                         f" ({', '.join(sources)}): say which with --source")
        self.sources = sources


@dataclass(frozen=True)
class Moderation:
    redis: Any
    pool: Any
    scripts: Scripts
    keys: Keys

    def key_of(self, kind: str, user_id: str) -> str:
        """The Redis key the hot path reads for a restriction of ``kind``."""
        player = self.keys.player(user_id)
        return {"flagged": player.flagged, "banned": player.banned,
                "shadow_banned": player.shadow_banned}[kind](user_id)

    async def record_event(self, connection: Any, *, user_id: str | None, rule: str,
                           severity: str, action: str, evidence: dict[str, Any],
                           client_addr: str | None = None, event_key: str | None = None) -> bool:
        """One ``fraud_events`` row; False when ``event_key`` was recorded already."""
        status = await connection.execute(
            "INSERT INTO fraud_events (user_id, client_addr, rule, severity, action, evidence,"
            " event_key) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (event_key) WHERE event_key IS NOT NULL DO NOTHING",
            user_id, client_addr, rule, severity, action, evidence, event_key)
        inserted: bool = status.endswith(" 1")
        if inserted:
            count_fraud_event(rule, severity)
        return inserted

    async def restrict(self, user_id: str, kind: str, *, reason: str, rule: str = "manual",
                       severity: str = "high", ttl_s: int | None = None,
                       evidence: dict[str, Any] | None = None) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=ttl_s) if ttl_s else None
        async with self.pool.acquire() as connection, connection.transaction():
            await insert_restriction(connection, user_id=user_id, kind=kind, reason=reason,
                                     expires=expires, level=None)
            await self.record_event(connection, user_id=user_id, rule=rule, severity=severity,
                                    action=kind, evidence=evidence or {"reason": reason})
        await self.redis.set(self.key_of(kind, user_id), reason,
                             px=ttl_s * 1000 if ttl_s else None)
        if kind in ("banned", "shadow_banned"):
            await self.hide_everywhere(user_id)

    async def lift(self, user_id: str, kind: str, *, reason: str, by: str = "moderator",
                   appeal: bool = False) -> int:
        """Lift the user's active restriction of ``kind``, recording who and why.
        ``appeal``: the automatic decision was wrong, so it is undone: the user's
        automatic restrictions no longer count towards the ladder's next rung.
        Returns how many rows it lifted."""
        async with self.pool.acquire() as connection, connection.transaction():
            lifted = await connection.fetch(
                "UPDATE user_restrictions SET lifted_at = now(), ended_by = $3,"
                " lift_reason = $4, appealed = $5"
                " WHERE user_id = $1 AND kind = $2 AND lifted_at IS NULL"
                " RETURNING id, reason, level", user_id, kind, by, reason, appeal)
            if appeal:  # an accepted appeal resets the user's ladder
                await connection.execute(
                    "UPDATE user_restrictions SET appealed = true WHERE user_id = $1"
                    " AND level IS NOT NULL", user_id)
            await self.record_event(
                connection, user_id=user_id, rule="manual", severity="low",
                action=f"lifted_{kind}",
                evidence={"reason": reason, "by": by, "appeal": appeal,
                          "lifted": [{"id": r["id"], "rule": r["reason"], "rung": r["level"]}
                                     for r in lifted]})
        await self.redis.delete(self.key_of(kind, user_id))
        if kind in ("banned", "shadow_banned"):
            await self.show_everywhere(user_id)
        return len(lifted)

    async def _announce(self, boards: list[str]) -> None:
        if is_cluster(self.redis):  # no MULTI there, and PUBLISH cannot be pipelined
            for board in boards:
                await self.redis.incr(self.keys.board_revision(board))
                await publish(self.redis, self.keys.board_changes, board)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for board in boards:
                pipe.incr(self.keys.board_revision(board))
                pipe.publish(self.keys.board_changes, board)
            await pipe.execute()

    async def hide_everywhere(self, user_id: str) -> list[str]:
        """Take the user off every board (the banned/shadow key must already be set,
        so that no concurrent worker puts them back)."""
        changed = []
        for raw_board in await self.redis.smembers(self.keys.boards):
            board = raw_board.decode() if isinstance(raw_board, bytes) else raw_board
            entry = await self.redis.hget(self.keys.board_entries(board), user_id)
            if entry is None:
                continue
            member = (entry.decode() if isinstance(entry, bytes) else entry).partition("|")[2]
            # (a cluster has no MULTI: both commands in one pipeline, not atomically)
            async with self.redis.pipeline(transaction=not is_cluster(self.redis)) as pipe:
                pipe.zrem(self.keys.board(board), member)
                pipe.hdel(self.keys.board_entries(board), user_id)
                await pipe.execute()
            changed.append(board)
        await self._announce(changed)
        return changed

    async def show_everywhere(self, user_id: str) -> list[str]:
        """Put the user back on every board with their committed totals."""
        rows = await self.pool.fetch(
            "SELECT s.board, s.score, s.reached_at, s.version, u.username"
            " FROM scores s JOIN users u USING (user_id) WHERE s.user_id = $1"
            f" AND {NOT_ARCHIVED.format(column='s.board')}", user_id)
        for row in rows:
            total = BoardTotal(board=row["board"], user_id=user_id, score=row["score"],
                               reached_at=row["reached_at"], version=row["version"],
                               username=row["username"])
            await set_totals_in(self.redis, self.scripts, self.keys, [total])
        boards = [row["board"] for row in rows]
        await self._announce(boards)
        return boards

    async def remove_action(self, event_id: str, *, reason: str,
                            source: str | None = None) -> list[BoardTotal]:
        """Delete one action and correct its user's total in Postgres and on the board.

        Event ids are each source's own: when two sources used ``event_id``,
        ``source`` must say which (:class:`AmbiguousAction` otherwise, nothing
        removed)."""
        totals = []
        async with self.pool.acquire() as connection, connection.transaction():
            found = await connection.fetch(FIND_ACTION, event_id, source)
            if len(found) > 1:
                raise AmbiguousAction(event_id, [row["source"] for row in found])
            removed = [] if not found else await connection.fetch(
                "DELETE FROM actions WHERE created_at = $3 AND event_id = $1 AND source = $2"
                " RETURNING user_id, board, points, created_at", event_id, found[0]["source"],
                found[0]["created_at"])
            for action in removed:
                username = await connection.fetchval(
                    "SELECT username FROM users WHERE user_id = $1", action["user_id"])
                definition = await load_board(connection, action["board"],
                                              service_max=SERVICE_MAX_UNUSED)
                if definition is not None and not definition.plain:
                    # its windows' open periods (and a best board's total) are
                    # computed again; archived periods stay frozen
                    totals.extend(await correct_scopes(
                        connection, definition, user_id=action["user_id"], username=username,
                        accepted_at=action["created_at"]))
                if definition is not None and definition.operator == "best":
                    continue
                row = await connection.fetchrow(
                    "UPDATE scores SET score = score - $3, version = version + 1,"
                    " reached_at = COALESCE((SELECT max(created_at) FROM actions"
                    "   WHERE user_id = $2 AND board = $1), reached_at)"
                    " WHERE board = $1 AND user_id = $2"
                    " RETURNING score, reached_at, version",
                    action["board"], action["user_id"], action["points"])
                totals.append(BoardTotal(board=action["board"], user_id=action["user_id"],
                                         score=row["score"], reached_at=row["reached_at"],
                                         version=row["version"], username=username))
                if row["score"] <= 0:
                    await connection.execute("DELETE FROM scores WHERE board = $1 AND user_id = $2",
                                             action["board"], action["user_id"])
                await self.record_event(
                    connection, user_id=action["user_id"], rule="manual", severity="high",
                    action="action_removed",
                    evidence={"event_id": event_id, "board": action["board"],
                              "points": action["points"], "reason": reason})
        if totals:
            await set_totals_in(self.redis, self.scripts, self.keys, totals)
            await self._announce(sorted({t.board for t in totals}))
        return totals

    async def events(self, *, user_id: str | None = None, limit: int = 50) -> list[Any]:
        rows: list[Any] = await self.pool.fetch(
            "SELECT id, created_at, user_id, client_addr, rule, severity, action, evidence"
            " FROM fraud_events WHERE ($1::text IS NULL OR user_id = $1)"
            " ORDER BY id DESC LIMIT $2", user_id, limit)
        return rows


async def restore_restrictions(redis: Any, pool: Any, keys: Keys) -> int:
    """Put every active flag and ban (and revoked access token) back into Redis,
    e.g. after Redis lost its data. Returns how many keys were written."""
    restrictions = await pool.fetch(
        "SELECT user_id, kind, reason, expires_at FROM user_restrictions"
        " WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > now())")
    revoked = await pool.fetch(
        "SELECT jti, user_id, expires_at FROM revoked_tokens WHERE expires_at > now()")
    now = datetime.now(UTC)
    def key_of(kind: str, user_id: str) -> str:
        player = keys.player(user_id)
        return {"flagged": player.flagged, "banned": player.banned,
                "shadow_banned": player.shadow_banned}[kind](user_id)

    def ttl_ms(expires: datetime) -> int:
        return max(1, int((expires - now).total_seconds() * 1000))

    async with redis.pipeline(transaction=False) as pipe:
        for row in restrictions:
            pipe.set(key_of(row["kind"], row["user_id"]), row["reason"],
                     px=ttl_ms(row["expires_at"]) if row["expires_at"] else None)
        for row in revoked:
            pipe.set(keys.player(row["user_id"]).revoked_jti(row["jti"]), "1",
                     px=ttl_ms(row["expires_at"]))
        await pipe.execute()
    return len(restrictions) + len(revoked)

"""Every Redis key name, in one place; nothing else spells a key.

All keys of a deployment carry one hash tag, ``{<prefix>}``, so that every
script's keys hash to the same slot and each script runs unchanged on Redis
Cluster. The prefix separates deployments and test runs sharing a server.
Sharding the stream by user (several tags) is the documented next step when
one slot is no longer enough; only this module and the worker's stream list
would change.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = "{" + prefix + "}"

    # The hand-off from ingest to workers.
    @property
    def stream(self) -> str:
        return f"{self.tag}:stream:increments"

    def action_token(self, nonce: str) -> str:
        """Holds the user id an unused action token was issued to; gone once used."""
        return f"{self.tag}:atok:{nonce}"

    def revoked_jti(self, jti: str) -> str:
        """Exists while a revoked access token would still be unexpired."""
        return f"{self.tag}:revoked:{jti}"

    def banned(self, user_id: str) -> str:
        return f"{self.tag}:banned:{user_id}"

    def flagged(self, user_id: str) -> str:
        return f"{self.tag}:flagged:{user_id}"

    def event(self, event_id: str, source: str = "player") -> str:
        """Idempotency marker of an accepted event id (expires after the dedup TTL),
        per source as in ``counted_events``: two game backends may both send "e1"."""
        return f"{self.tag}:event:{source}:{event_id}"

    def user_rate(self, limit_name: str, user_id: str) -> str:
        return f"{self.tag}:rate:{limit_name}:user:{user_id}"

    def ip_rate(self, limit_name: str, address: str) -> str:
        return f"{self.tag}:rate:{limit_name}:ip:{address}"

    # Fraud (see docs/fraud.md).
    def shadow_banned(self, user_id: str) -> str:
        """Exists while the user is hidden from boards but not told so."""
        return f"{self.tag}:shadow-banned:{user_id}"

    def recent_actions(self, user_id: str) -> str:
        """ZSET of the user's accepted increments in the rapid-actions window."""
        return f"{self.tag}:recent:{user_id}"

    def token_failures_user(self, user_id: str) -> str:
        return f"{self.tag}:token-failures:user:{user_id}"

    def token_failures_ip(self, address: str) -> str:
        return f"{self.tag}:token-failures:ip:{address}"

    def address_limited(self, address: str) -> str:
        """Exists while an address is refused for token manipulation."""
        return f"{self.tag}:address-limited:{address}"

    def rate_refusals(self, user_id: str) -> str:
        """Counter of the user's per-user 429s in the rate-hammering window."""
        return f"{self.tag}:rate-refusals:user:{user_id}"

    def cadence(self, user_id: str) -> str:
        """The user's latest accepted ms, "ms,ms,...", oldest first (cadence rule)."""
        return f"{self.tag}:cadence:{user_id}"

    def active_hours(self, user_id: str) -> str:
        """ZSET of the hour numbers in which the user had an accept (tireless rule)."""
        return f"{self.tag}:active-hours:{user_id}"

    def top_run(self, user_id: str) -> str:
        """"run,newest ms": the user's accepts in a row at their board's top price
        (top-action rule)."""
        return f"{self.tag}:top-run:{user_id}"

    @property
    def anomaly_due(self) -> str:
        """Exists for ``ANOMALY_EVERY_S`` after an anomaly pass started: one pass a
        period, whatever the number of workers."""
        return f"{self.tag}:anomaly-pass"

    def address_accounts(self, address: str) -> str:
        """ZSET user id -> latest accepted ms of the accounts acting from ``address``
        (farm rule)."""
        return f"{self.tag}:address-accounts:{address}"

    def address_activity(self, address: str, window_index: int) -> str:
        """HASH user id -> accepts from ``address`` in fixed farm window number
        ``window_index`` (farm rule: how busy each account is)."""
        return f"{self.tag}:address-activity:{address}:{window_index}"

    @property
    def fraud_stream(self) -> str:
        """Decisions taken in Lua, waiting for a worker to record them in Postgres."""
        return f"{self.tag}:stream:fraud-events"

    # Leaderboards (a projection of Postgres ``scores``; see scoreboard/board_writes.py).
    def board(self, board: str) -> str:
        """ZSET of ``board`` in rank order (see scoreboard/ranking.py)."""
        return f"{self.tag}:board:{board}"

    def board_entries(self, board: str) -> str:
        """HASH user id -> "<version>|<ZSET member>" of ``board``."""
        return f"{self.tag}:board-entries:{board}"

    def board_staging(self, board: str, token: str) -> tuple[str, str]:
        """Where a rebuild assembles a board (ZSET, entries) before swapping it in."""
        return (f"{self.tag}:board-rebuild:{board}:{token}",
                f"{self.tag}:board-entries-rebuild:{board}:{token}")

    @property
    def board_definitions(self) -> str:
        """HASH board -> JSON definition (actions, max points): the boards that exist
        (see scoreboard/board_defs.py; Postgres ``boards`` is the record)."""
        return f"{self.tag}:board-definitions"

    @property
    def boards(self) -> str:
        """SET of every board name that has a ZSET."""
        return f"{self.tag}:boards"

    def board_revision(self, board: str) -> str:
        """Counter bumped by every committed change of ``board``."""
        return f"{self.tag}:board-revision:{board}"

    @property
    def usernames(self) -> str:
        """HASH user id -> display name, for rendering boards without Postgres."""
        return f"{self.tag}:usernames"

    @property
    def board_changes(self) -> str:
        """Pub/sub channel: a board name is published after each committed change."""
        return f"{self.tag}:board-changes"

    # The worker side of the stream.
    @property
    def dead_letters(self) -> str:
        """Stream of entries given up on, each with the reason."""
        return f"{self.tag}:stream:dead-letters"

    def consumer_heartbeat(self, consumer: str) -> str:
        return f"{self.tag}:consumer-alive:{consumer}"

    @property
    def arq_queue(self) -> str:
        """arq's job queue (arq derives its other key names from it)."""
        return f"{self.tag}:arq:queue"

"""Every Redis key name, in one place; nothing else spells a key.

Single node (the default, ``REDIS_SHARDS=1`` without ``REDIS_CLUSTER``): every key
of a deployment carries one hash tag, ``{<prefix>}``, as it always has. The prefix
separates deployments and test runs sharing a server.

Sharded (``REDIS_CLUSTER=1`` or ``REDIS_SHARDS`` > 1): the same names under other
tags, so that every script call touches one slot of a Redis Cluster:

- a player's keys (action tokens, per-user limits, dedup markers, revoked access
  tokens, bans and flags, the rapid-actions window, cadence, ...) and its shard's
  streams (increments, fraud events, dead letters) carry ``{<prefix>:s<N>}``, N the
  player's shard (:meth:`Keys.shard_of`, a CRC32 of the user id: stable across
  processes and restarts; changing ``REDIS_SHARDS`` moves players, so it is set
  once per deployment);
- an address's keys (per-address limits, token-failure counts, the farm rule's
  sets) carry ``{<prefix>:a:<address>}``, a slot per address;
- everything else (boards, board definitions, names, arq) keeps ``{<prefix>}``.

A view (:meth:`Keys.player`, :meth:`Keys.shard`, :meth:`Keys.at_address`) is a
``Keys`` with another tag: ``keys.player(user_id).action_token(nonce)``. A name
that takes the user id (``banned``, ``user_rate``, ...) or the address (``ip_rate``,
``address_limited``, ...) is routed by the deployment's ``Keys`` itself:
``keys.banned(user_id)`` is the player's shard's key; on a view it keeps the
view's tag (a script's stand-in keys rely on that). Unsharded, every view is the
``Keys`` itself, so the names are today's.
"""

from __future__ import annotations

import zlib


class Keys:
    def __init__(self, prefix: str, *, shards: int = 1, cluster: bool = False,
                 tag: str | None = None) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.prefix = prefix
        self.shards = shards
        self.sharded = cluster or shards > 1
        self.cluster = cluster
        self.is_view = tag is not None
        self.tag = tag or "{" + prefix + "}"

    def _user_tag(self, user_id: str) -> str:
        """The tag of a per-player name: its shard's, unless this is a view."""
        if not self.sharded or self.is_view:
            return self.tag
        return "{" + f"{self.prefix}:s{self.shard_of(user_id)}" + "}"

    def _address_tag(self, address: str) -> str:
        """The tag of a per-address name: the address's, unless this is a view."""
        if not self.sharded or self.is_view:
            return self.tag
        return "{" + f"{self.prefix}:a:{address}" + "}"

    def _view(self, tag: str) -> Keys:
        return Keys(self.prefix, shards=self.shards, cluster=self.cluster, tag=tag)

    # Sharding (see the module docstring).
    def shard_of(self, user_id: str) -> int:
        """The player's shard: stable (CRC32), 0 when unsharded."""
        if self.shards == 1:
            return 0
        return zlib.crc32(user_id.encode()) % self.shards

    def shard(self, index: int) -> Keys:
        """The keys of shard ``index`` (this ``Keys`` when unsharded)."""
        if not self.sharded:
            return self
        return self._view("{" + f"{self.prefix}:s{index}" + "}")

    def player(self, user_id: str) -> Keys:
        """The keys of ``user_id``'s shard."""
        return self.shard(self.shard_of(user_id))

    def at_address(self, address: str) -> Keys:
        """The keys of a client address (a slot per address when sharded)."""
        if not self.sharded:
            return self
        return self._view("{" + f"{self.prefix}:a:{address}" + "}")

    @property
    def every_shard(self) -> list[Keys]:
        """One view per shard, in shard order (``[self]`` when unsharded)."""
        return [self.shard(index) for index in range(self.shards)]

    @property
    def streams(self) -> list[str]:
        """The increment stream of every shard, in shard order."""
        return [view.stream for view in self.every_shard]

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
        return f"{self._user_tag(user_id)}:banned:{user_id}"

    @property
    def banned_prefix(self) -> str:
        """``banned(user_id)`` is this followed by the user id, on an unsharded ``Keys``
        or a shard's view, where every player's tag is ``tag`` (``lua/batch.lua``
        and ``lua/apply_batch.lua`` build the keys from it)."""
        return f"{self.tag}:banned:"

    def flagged(self, user_id: str) -> str:
        return f"{self._user_tag(user_id)}:flagged:{user_id}"

    def event_marks(self, source: str) -> str:
        """Prefix of the SETs of accepted event ids of ``source``, one per window
        (``scoreboard.dedup_marks``); per source as in ``counted_events``: two game
        backends may both send "e1"."""
        return f"{self.tag}:marks:{source}:"

    def user_rate(self, limit_name: str, user_id: str) -> str:
        return f"{self._user_tag(user_id)}:rate:{limit_name}:user:{user_id}"

    def ip_rate(self, limit_name: str, address: str) -> str:
        return f"{self._address_tag(address)}:rate:{limit_name}:ip:{address}"

    # Fraud (see docs/fraud.md).
    def shadow_banned(self, user_id: str) -> str:
        """Exists while the user is hidden from boards but not told so."""
        return f"{self._user_tag(user_id)}:shadow-banned:{user_id}"

    @property
    def shadow_banned_prefix(self) -> str:
        """``shadow_banned(user_id)`` is this followed by the user id, where every
        player's tag is ``tag`` (as :attr:`banned_prefix`)."""
        return f"{self.tag}:shadow-banned:"

    def recent_actions(self, user_id: str) -> str:
        """ZSET of the user's accepted increments in the rapid-actions window."""
        return f"{self._user_tag(user_id)}:recent:{user_id}"

    def token_failures_user(self, user_id: str) -> str:
        return f"{self._user_tag(user_id)}:token-failures:user:{user_id}"

    def token_failures_ip(self, address: str) -> str:
        return f"{self._address_tag(address)}:token-failures:ip:{address}"

    def address_limited(self, address: str) -> str:
        """Exists while an address is refused for token manipulation."""
        return f"{self._address_tag(address)}:address-limited:{address}"

    def rate_refusals(self, user_id: str) -> str:
        """Counter of the user's per-user 429s in the rate-hammering window."""
        return f"{self._user_tag(user_id)}:rate-refusals:user:{user_id}"

    def cadence(self, user_id: str) -> str:
        """The user's latest accepted ms, "ms,ms,...", oldest first (cadence rule)."""
        return f"{self._user_tag(user_id)}:cadence:{user_id}"

    def active_hours(self, user_id: str) -> str:
        """ZSET of the hour numbers in which the user had an accept (tireless rule)."""
        return f"{self._user_tag(user_id)}:active-hours:{user_id}"

    def top_run(self, user_id: str) -> str:
        """"run,newest ms": the user's accepts in a row at their board's top price
        (top-action rule)."""
        return f"{self._user_tag(user_id)}:top-run:{user_id}"

    @property
    def anomaly_due(self) -> str:
        """Exists for ``ANOMALY_EVERY_S`` after an anomaly pass started: one pass a
        period, whatever the number of workers."""
        return f"{self.tag}:anomaly-pass"

    def address_accounts(self, address: str) -> str:
        """ZSET user id -> latest accepted ms of the accounts acting from ``address``
        (farm rule)."""
        return f"{self._address_tag(address)}:address-accounts:{address}"

    def address_activity(self, address: str, window_index: int) -> str:
        """HASH user id -> accepts from ``address`` in fixed farm window number
        ``window_index`` (farm rule: how busy each account is)."""
        return f"{self._address_tag(address)}:address-activity:{address}:{window_index}"

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

"""One typed wrapper per Lua script: the only place that knows a script's KEYS and
ARGV order (the header of ``lua/<name>.lua``) and the shape of its reply.

Callers pass named values and get a typed reply; nobody else builds a KEYS or ARGV
list. Each wrapper holds a redis-py ``Script`` (or a stand-in with the same
``await script(keys=..., args=...)`` call, such as ingest's coalesced one: swap it
with :meth:`TypedScript.through`). A test checks each fixed-size script's lists
against the highest ``KEYS[n]`` and ``ARGV[n]`` the script reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Self

import orjson

from scoreboard.keys import Keys
from scoreboard.ranking import epoch_ms
from scoreboard.stream_entry import pack_item

if TYPE_CHECKING:
    from scoreboard.board_writes import BoardTotal
    from scoreboard.limits import Rate

Call = tuple[list[Any], list[Any]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class TypedScript:
    """A registered script (``script``: redis-py ``Script`` or a stand-in)."""

    script: Any

    def through(self, runner: Any) -> Self:
        """The same wrapper calling ``runner`` instead (it must take keys= and args=)."""
        return dataclasses.replace(self, script=runner)

    def _run(self, call: Call, client: Any = None) -> Awaitable[Any]:
        """The script's reply, to await (the script's own awaitable: no coroutine of
        ours in between, see ``ingest.script_batching.CoalescedScript``)."""
        keys, args = call
        reply: Awaitable[Any] = (self.script(keys=keys, args=args) if client is None
                                 else self.script(keys=keys, args=args, client=client))
        return reply


# --- ingest's hot path ------------------------------------------------------------------------


class Refusal(NamedTuple):
    """A script's decision: ``reason`` 'ok' or why it refused (nothing written)."""

    reason: str
    retry_after_ms: int


class IncrementReply(NamedTuple):
    reason: str  # 'ok', 'replayed' or a refusal reason
    retry_after_ms: int
    flagged_now: bool  # this increment flagged the user (rapid actions)


class AddressVerdict(NamedTuple):
    """``lua/address_gate.lua``'s answer for one address (sharded deployments)."""

    limited_ttl_ms: int  # <= 0: the address is not limited for token manipulation
    retry_after_ms: int  # 0: its limit lets one more request through


class AddressGateScript(TypedScript):
    """``lua/address_gate.lua``: the per-address checks, read-only, in the address's slot."""

    async def __call__(self, keys: Keys, *, address: str, limit_name: str,
                       rate: Rate) -> AddressVerdict:
        view = keys.at_address(address)
        call: Call = ([view.ip_rate(limit_name, address), view.address_limited(address)],
                      [*rate.as_args()])
        limited_ttl, retry_ms = await self._run(call)
        return AddressVerdict(int(limited_ttl), int(retry_ms))


class IncrementScript(TypedScript):
    """``lua/increment.lua``: accept one player increment, or refuse it unchanged."""

    async def __call__(self, keys: Keys, *, user_id: str, jti: str, nonce: str, address: str,
                       event_id: str, board: str, points: int, username: str, source: str,
                       request_id: str, user_rate: Rate, flagged_rate: Rate, ip_rate: Rate,
                       dedup_ttl_ms: int, rapid_max: int, rapid_window_ms: int,
                       flag_duration_ms: int, traceparent: str = "",
                       address_verdict: AddressVerdict | None = None) -> IncrementReply:
        """Sharded (``keys.sharded``), ``address_verdict`` is required: the address's
        keys are in another slot, so the script takes their answer instead."""
        player = keys.player(user_id)
        if keys.sharded:  # the address's keys stand in by a key of the player's slot
            ip_key = limited_key = player.user_rate("increment", user_id)
        else:
            ip_key, limited_key = keys.ip_rate("increment", address), keys.address_limited(address)
        args: list[Any] = [user_id, *user_rate.as_args(), *flagged_rate.as_args(),
                           *ip_rate.as_args(), dedup_ttl_ms, event_id, board, points, username,
                           source, address, request_id, rapid_max, rapid_window_ms,
                           flag_duration_ms, traceparent]
        if keys.sharded:
            if address_verdict is None:
                raise ValueError("a sharded increment needs the address's verdict")
            args += [address_verdict.limited_ttl_ms, address_verdict.retry_after_ms]
        call: Call = ([player.action_token(nonce), player.revoked_jti(jti),
                       player.banned(user_id), player.flagged(user_id),
                       player.user_rate("increment", user_id),
                       player.user_rate("increment_flagged", user_id), ip_key,
                       player.event_marks(source), player.stream, limited_key,
                       player.recent_actions(user_id), player.fraud_stream,
                       player.token_failures_user(user_id)], args)
        reason, detail, *rest = await self._run(call)
        reason = _text(reason)
        if reason == "ok":  # {'ok', stream id, accepted ms, flagged now}
            return IncrementReply(reason, 0, bool(int(rest[1])))
        return IncrementReply(reason, int(detail), False)


class ActionTokenScript(TypedScript):
    """``lua/action_token.lua``: record a newly issued action token, or refuse."""

    async def __call__(self, keys: Keys, *, user_id: str, jti: str, nonce: str, address: str,
                       user_rate: Rate, ip_rate: Rate, token_ttl_ms: int,
                       address_verdict: AddressVerdict | None = None) -> Refusal:
        """Sharded, ``address_verdict`` is required (see :class:`IncrementScript`)."""
        player = keys.player(user_id)
        args: list[Any] = [user_id, *user_rate.as_args(), *ip_rate.as_args(), token_ttl_ms]
        if keys.sharded:
            if address_verdict is None:
                raise ValueError("a sharded action token needs the address's verdict")
            ip_key = limited_key = player.user_rate("action_token", user_id)
            args += [address_verdict.limited_ttl_ms, address_verdict.retry_after_ms]
        else:
            ip_key = keys.ip_rate("action_token", address)
            limited_key = keys.address_limited(address)
        call: Call = ([player.revoked_jti(jti), player.banned(user_id),
                       player.user_rate("action_token", user_id), ip_key,
                       player.action_token(nonce), limited_key,
                       player.token_failures_user(user_id)], args)
        reason, retry_ms = await self._run(call)
        return Refusal(_text(reason), int(retry_ms))


class BatchItem(NamedTuple):
    """One increment of a game backend's batch, as ``lua/batch.lua`` takes it (a
    tuple: a batch makes a thousand of them per request)."""

    event_id: str
    user_id: str
    board: str
    points: int
    username: str


class BatchReply(NamedTuple):
    reason: str
    retry_after_ms: int
    accepted: int
    duplicates: int
    refused: list[str]  # event ids refused (banned user)


class BatchScript(TypedScript):
    """``lua/batch.lua``: accept a game backend's batch of increments, atomically.

    Sharded, one call is one shard's part (``gated``): the backend's own checks
    were made by :class:`BackendGateScript` and its limit is charged by the caller
    (scoreboard/sharded_calls.py)."""

    async def __call__(self, keys: Keys, *, backend_id: str, jti: str, address: str,
                       request_id: str, rate: Rate, dedup_ttl_ms: int,
                       items: Sequence[BatchItem], traceparent: str = "",
                       shard: int | None = None) -> BatchReply:
        """``shard``: the shard every item's user is in (sharded deployments only)."""
        if shard is None:
            view, rate_args = keys, rate.as_args()
            script_keys = [keys.revoked_jti(jti), keys.user_rate("backend", backend_id),
                           keys.stream, keys.banned(backend_id)]
        else:  # the backend's keys stand in by one key of the shard's slot
            view, rate_args = keys.shard(shard), (0, 1)
            stand_in = view.user_rate("backend", backend_id)
            script_keys = [stand_in, stand_in, view.stream, stand_in]
        source = f"backend:{backend_id}"
        # The mark and banned keys are built in the script from these two prefixes,
        # which carry the tag of the call's slot (the shard's, on a sharded cluster).
        script_keys += [view.event_marks(source), view.banned_prefix]
        args: list[Any] = [*rate_args, dedup_ttl_ms, source, address, request_id,
                           traceparent]
        # One argument per increment (see the script's header): Redis's cost per
        # increment is what bounds a batch.
        args += [pack_item(*item) for item in items]
        call: Call = script_keys, args
        reason, *rest = await self._run(call)
        reason = _text(reason)
        if reason != "ok":
            return BatchReply(reason, int(rest[0]), 0, 0, [])
        accepted, duplicates, *refused = rest
        return BatchReply(reason, 0, int(accepted), int(duplicates), [_text(e) for e in refused])


class BackendGateScript(TypedScript):
    """``lua/backend_gate.lua``: a backend's checks before a sharded batch, read-only."""

    async def __call__(self, keys: Keys, *, backend_id: str, jti: str, rate: Rate,
                       cost: int) -> Refusal:
        view = keys.player(backend_id)
        call: Call = ([view.revoked_jti(jti), view.user_rate("backend", backend_id),
                       view.banned(backend_id)], [*rate.as_args(), cost])
        reason, retry_ms = await self._run(call)
        return Refusal(_text(reason), int(retry_ms))


class RateLimitScript(TypedScript):
    """``lua/rate_limit.lua``: one GCRA limit, checked and committed atomically."""

    async def __call__(self, keys: Keys, *, rate_key: str, rate: Rate, cost: int = 1) -> Refusal:
        """'ok', or 'limited' with the wait."""
        call: Call = [rate_key], [*rate.as_args(), cost]
        allowed, retry_ms = await self._run(call)
        return Refusal("ok" if int(allowed) else "limited", int(retry_ms))


class TokenFailureReply(NamedTuple):
    user_failures: int
    address_failures: int
    flagged_now: bool
    limited_now: bool


class TokenFailureScript(TypedScript):
    """``lua/token_failure.lua``: count a token-manipulation failure; flag or limit."""

    async def __call__(self, keys: Keys, *, user_id: str, address: str, failure: str,
                       window_ms: int, to_flag: int, to_limit_address: int,
                       address_limit_ms: int, flag_ms: int, part: str = "") -> TokenFailureReply:
        """(``user_id`` '' for none). Sharded, the user's ``part='user'`` and the
        address's ``part='address'`` are two calls, each in its own slot
        (scoreboard/sharded_calls.py); an address limited by the second is not on a
        fraud stream yet (``limited_now``: the caller records it)."""
        if part == "address":
            view = keys.at_address(address)
            address_key = view.token_failures_ip(address)
            call_keys = [address_key, address_key, address_key, view.address_limited(address),
                         address_key, address_key]
        elif part == "user":
            view = keys.player(user_id)
            user_key = view.token_failures_user(user_id)
            call_keys = [user_key, user_key, view.banned(user_id), user_key, view.fraud_stream,
                         view.flagged(user_id)]
        else:
            user_key = keys.token_failures_user(user_id) if user_id else keys.token_failures_ip(
                address)
            call_keys = [user_key, keys.token_failures_ip(address), keys.banned(user_id or "-"),
                         keys.address_limited(address), keys.fraud_stream,
                         keys.flagged(user_id or "-")]
        args: list[Any] = [user_id, address, failure, window_ms, to_flag, to_limit_address,
                           address_limit_ms, flag_ms]
        if part:
            args.append(part)
        call: Call = call_keys, args
        users, addresses, flagged, limited = await self._run(call)
        return TokenFailureReply(int(users), int(addresses), bool(int(flagged)),
                                 bool(int(limited)))


class RateRefusalScript(TypedScript):
    """``lua/rate_refusal.lua``: count a user's 429; flag the user past a threshold."""

    async def __call__(self, keys: Keys, *, user_id: str, address: str, endpoint: str,
                       window_ms: int, to_flag: int, flag_duration_ms: int) -> bool:
        """Whether this refusal flagged the user.."""
        player = keys.player(user_id)
        call: Call = ([player.rate_refusals(user_id), player.flagged(user_id),
                       player.banned(user_id), player.fraud_stream],
                      [user_id, address, endpoint, window_ms, to_flag, flag_duration_ms])
        _, flagged = await self._run(call)
        return bool(int(flagged))


# --- boards -----------------------------------------------------------------------------------


class BoardPage(NamedTuple):
    revision: int
    size: int
    higher_than_first: int
    rows: list[tuple[str, float, str]]  # member, ZSET score, display name


class BoardPageScript(TypedScript):
    """``lua/board_page.lua``: a consistent slice of a board, read-only."""

    async def __call__(self, keys: Keys, *, board: str, start: int, stop: int) -> BoardPage:
        """Positions ``start``..``stop`` (0-based, inclusive) of ``board``."""
        call: Call = [keys.board(board), keys.board_revision(board), keys.usernames], [start, stop]
        revision, size, higher, *flat = await self._run(call)
        rows = [(_text(flat[i]), float(_text(flat[i + 1])), _text(flat[i + 2]))
                for i in range(0, len(flat), 3)]
        return BoardPage(int(revision), int(size), int(higher), rows)


class WatchedRow(NamedTuple):
    user_id: str
    total: int
    username: str
    higher: int  # entries with a strictly higher total (competition rank - 1)


class WatchedPlayer(NamedTuple):
    known: bool  # has a display name: has scored on some board
    position: int | None  # 0-based; None when not on the board
    rows: list[WatchedRow]  # positions position - 1 .. position + 1 that exist


class WatchRanksScript(TypedScript):
    """``lua/watch_ranks.lua``: where each watched player stands, read-only."""

    async def __call__(self, keys: Keys, *, board: str, user_ids: Sequence[str]
                       ) -> tuple[int, list[WatchedPlayer]]:
        """The board's revision and one reply per user id, in order."""
        call: Call = [keys.board(board), keys.board_entries(board), keys.board_revision(board),
                      keys.usernames], list(user_ids)
        revision, *replies = await self._run(call)
        players = []
        for known, position, *flat in replies:  # integers come back as int
            rows = [WatchedRow(_text(flat[i]), flat[i + 1], _text(flat[i + 2]), flat[i + 3])
                    for i in range(0, len(flat), 4)]
            players.append(WatchedPlayer(bool(int(known)),
                                         None if int(position) < 0 else int(position), rows))
        return int(revision), players


class SetTotalsScript(TypedScript):
    """``lua/set_totals.lua``: users' totals on one board, each only if newer."""

    async def __call__(self, keys: Keys, *, board: str, totals: Sequence[BoardTotal],
                       board_key: str | None = None, entries_key: str | None = None,
                       client: Any = None, hidden: Sequence[bool] | None = None) -> Any:
        """The number of entries changed; on a pipeline (``client``) awaiting only
        queues the call. ``hidden`` (sharded: one per total, read in the players'
        slots) replaces the users' banned keys."""
        if keys.sharded and hidden is None:
            raise ValueError("sharded: the users' bans are in other slots; pass hidden")
        script_keys = [board_key or keys.board(board), entries_key or keys.board_entries(board)]
        args: list[Any] = []
        for index, total in enumerate(totals):
            args += [total.user_id, total.score, epoch_ms(total.reached_at), total.version]
            if hidden is None:
                script_keys += [keys.banned(total.user_id), keys.shadow_banned(total.user_id)]
            else:
                args.append(int(hidden[index]))
        call: Call = script_keys, args
        return await self._run(call, client)


class ApplyBatchScript(TypedScript):
    """``lua/apply_batch.lua``: the Redis side of one persisted batch, in one call."""

    async def __call__(self, keys: Keys, *, group: str, totals: Sequence[BoardTotal],
                       ack_ids: Sequence[str], traceparent: str = "",
                       hidden: Sequence[bool] | None = None) -> int:
        """The totals travel as one JSON argument: packing three arguments per total
        into the command cost the worker more CPU than Redis spends on the script;
        for the same reason the users' banned keys are built in the script.
        A ``traceparent`` is appended to each notice (``board\ntraceparent``).
        ``hidden`` (sharded: one per total, read in the players' slot) replaces the
        users' banned keys, and nothing is acknowledged (``ack_ids`` must be empty;
        the caller XACKs in the stream's slot). Returns the number of board
        entries changed."""
        if keys.sharded and hidden is None:
            raise ValueError("sharded: the users' bans are in other slots; pass hidden")
        by_board: dict[str, list[Any]] = {}
        for total in totals:  # four values in a row per total, one list per board
            by_board.setdefault(total.board, []).extend(
                (total.user_id, total.score, epoch_ms(total.reached_at), total.version))
        boards = sorted(by_board)
        stream = keys.usernames if hidden is not None else keys.stream
        script_keys = [stream, keys.usernames, keys.boards]
        for board in boards:
            script_keys += [keys.board(board), keys.board_entries(board),
                            keys.board_revision(board)]
        if hidden is None:
            script_keys += [keys.banned_prefix, keys.shadow_banned_prefix]
        # each user's name once (its totals on several boards carry the same name)
        names = [part for pair in {t.user_id: t.username for t in totals}.items()
                 for part in pair]
        batch: dict[str, Any] = {"boards": boards,
                                 "totals": [by_board[board] for board in boards],
                                 "names": names, "ack": list(ack_ids)}
        if hidden is not None:
            if ack_ids:
                raise ValueError("with hidden flags the caller acknowledges")
            batch["hidden"] = sorted({t.user_id for t, flag in zip(totals, hidden, strict=True)
                                      if flag})
        if traceparent:
            batch["trace"] = traceparent
        payload = orjson.dumps(batch)
        call: Call = script_keys, [group, keys.board_changes, payload.decode()]
        return int(await self._run(call))


# --- the worker's fraud rules -----------------------------------------------------------------


class FlagUsersScript(TypedScript):
    """``lua/flag_users.lua``: flag users for a rule decided per batch."""

    async def __call__(self, keys: Keys, *, rule: str, severity: str, flag_duration_ms: int,
                       decisions: Sequence[tuple[str, str, str]]) -> list[str]:
        """``decisions``: (user id, client address, evidence as JSON text). Returns
        the user ids this call flagged. Sharded, one call per shard of the users
        (each records on its shard's fraud stream)."""
        by_shard: dict[int, list[tuple[str, str, str]]] = {}
        for decision in decisions:
            by_shard.setdefault(keys.shard_of(decision[0]), []).append(decision)
        flagged: list[str] = []
        for shard, own in sorted(by_shard.items()):
            view = keys.shard(shard)
            script_keys = [view.fraud_stream]
            args: list[Any] = [rule, severity, flag_duration_ms]
            for user_id, address, evidence in own:
                script_keys += [view.flagged(user_id), view.banned(user_id)]
                args += [user_id, address, evidence]
            call: Call = script_keys, args
            flagged += [_text(user) for user in await self._run(call)]
        return flagged


class FraudBatchReply(NamedTuple):
    cadence: list[tuple[int, list[int]]]  # (user index from 0, kept accept times)
    # (address index from 0, user id -> latest ms, user id -> accepts in the window)
    farms: list[tuple[int, dict[str, int], dict[str, int]]]
    tireless: list[tuple[int, list[int]]]  # (user index from 0, hours with an accept)
    top: list[tuple[int, int]]  # (user index from 0, accepts in a row at the top price)


class FraudBatchScript(TypedScript):
    """``lua/fraud_batch.lua``: the Redis state of the cadence, farm, tireless and
    top-action rules."""

    async def __call__(self, keys: Keys, *, users: Sequence[str], addresses: Sequence[str],
                       window_index: int, data: dict[str, Any]) -> FraudBatchReply:
        """``data``: the JSON argument the script's header describes, its ``users``
        and ``addresses`` lists in the order of ``users`` and ``addresses``;
        ``window_index``: the fixed farm window the chunk's accepts are counted in.

        Sharded, the users' keys are in their shards' slots and each address's in
        its own: one call per shard (its users) and one per address, the replies
        merged with the indexes of ``users`` and ``addresses``."""
        if not keys.sharded:
            return await self._call(keys, keys, users, addresses, window_index, data)
        cadence, farms, tireless, top = [], [], [], []
        by_shard: dict[int, list[int]] = {}
        for index, user_id in enumerate(users):
            by_shard.setdefault(keys.shard_of(user_id), []).append(index)
        for shard, indexes in sorted(by_shard.items()):
            part = {**data, "users": [data["users"][i] for i in indexes],
                    "hours": [data["hours"][i] for i in indexes],
                    "top": [data["top"][i] for i in indexes], "addresses": []}
            reply = await self._call(keys.shard(shard), keys, [users[i] for i in indexes], [],
                                     window_index, part)
            cadence += [(indexes[i], times) for i, times in reply.cadence]
            tireless += [(indexes[i], hours) for i, hours in reply.tireless]
            top += [(indexes[i], run) for i, run in reply.top]
        for index, address in enumerate(addresses):
            part = {**data, "users": [], "hours": [], "top": [],
                    "addresses": [data["addresses"][index]]}
            reply = await self._call(keys, keys.at_address(address), [], [address],
                                     window_index, part)
            farms += [(index, seen, counts) for _, seen, counts in reply.farms]
        return FraudBatchReply(cadence, farms, tireless, top)

    async def _call(self, user_keys: Keys, address_keys: Keys, users: Sequence[str],
                    addresses: Sequence[str], window_index: int,
                    data: dict[str, Any]) -> FraudBatchReply:
        call: Call = ([user_keys.cadence(u) for u in users]
                      + [user_keys.active_hours(u) for u in users]
                      + [user_keys.top_run(u) for u in users]
                      + [address_keys.address_accounts(a) for a in addresses]
                      + [address_keys.address_activity(a, window_index) for a in addresses],
                      [orjson.dumps(data)])
        cadence, farms, tireless, top = await self._run(call)

        def pairs(flat: Sequence[Any]) -> dict[str, int]:
            return {_text(m): int(float(v)) for m, v in zip(flat[::2], flat[1::2], strict=True)}

        return FraudBatchReply(
            [(int(index) - 1, [int(t) for t in times]) for index, times in cadence],
            [(int(index) - 1, pairs(seen), pairs(counts)) for index, seen, counts in farms],
            [(int(index) - 1, [int(h) for h in hours]) for index, hours in tireless],
            [(int(index) - 1, int(run)) for index, run in top])

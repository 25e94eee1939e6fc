"""Ingest's script calls as a sharded deployment makes them (scoreboard/keys.py).

Unsharded, each function is the one script call it always was. Sharded, a call
whose keys would span a player's slot and an address's (or a backend's) slot is
made in steps, each one script in one slot:

- action token, increment: the address's checks, read-only
  (``lua/address_gate.lua``); then the player's script, which takes the
  address's answer in place of reading the address's keys; then, only if it
  accepted, the address's limit is charged (``lua/rate_limit.lua``). A refused
  request writes nothing. What is given up: two requests from one address in
  flight at the same moment may both pass its limit's last unit (the check and
  the charge are two calls), so the per-address limit can be passed by the
  requests in flight at once from that address.
- a game backend's batch: how many of its event ids are new (read in the players'
  slots), the backend's checks, read-only (``lua/backend_gate.lua``, its limit
  against that count), then one ``lua/batch.lua``
  per player shard with that shard's items (each part atomic), then the
  backend's limit charged with the increments accepted. If a part fails (its
  node unreachable: a 503 to the client), the parts before it are in; the
  client's retry of the whole batch counts those as duplicates (their event ids
  are marked), so a retry is always safe. No part refuses otherwise: what a
  part could refuse for (revoked, banned backend, limit) was decided before any
  part ran; a banned player's item is refused inside its part, as today.
- a token failure: the user's count in its slot, the address's in its slot; an
  address limited by it is recorded on the player's shard's fraud stream by a
  third call (not atomic with the limit: a process dying in between leaves the
  limit without its fraud event).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from scoreboard.dedup_marks import marked
from scoreboard.keys import Keys
from scoreboard.limits import Rate
from scoreboard.lua import Scripts
from scoreboard.script_calls import (
    BatchItem,
    BatchReply,
    IncrementReply,
    Refusal,
    TokenFailureReply,
)

_Reply = TypeVar("_Reply", Refusal, IncrementReply)

def action_token(scripts: Scripts, keys: Keys, *, address: str, ip_rate: Rate,
                 **player: Any) -> Awaitable[Refusal]:
    return _address_gated(scripts, scripts.action_token, "action_token", keys,
                          address=address, ip_rate=ip_rate, **player)


def increment(scripts: Scripts, keys: Keys, *, address: str, ip_rate: Rate,
              **player: Any) -> Awaitable[IncrementReply]:
    return _address_gated(scripts, scripts.increment, "increment", keys,
                          address=address, ip_rate=ip_rate, **player)


def _address_gated(scripts: Scripts, call: Callable[..., Awaitable[_Reply]],
                   limit_name: str, keys: Keys, *, address: str, ip_rate: Rate,
                   **player: Any) -> Awaitable[_Reply]:
    """``call`` (the player's script) behind the address limit: one script on a single
    node; on a cluster the read-only gate in the address's slot, the player's script
    with its verdict, and the limit charged only after an accept. Plain functions
    returning the call's awaitable on a single node, not coroutines awaiting it: each
    coroutine on the way is resumed once more when the reply comes."""
    if not keys.sharded:
        return call(keys, address=address, ip_rate=ip_rate, **player)
    return _gated_on_cluster(scripts, call, limit_name, keys, address=address,
                             ip_rate=ip_rate, **player)


async def _gated_on_cluster(scripts: Scripts, call: Callable[..., Awaitable[_Reply]],
                            limit_name: str, keys: Keys, *, address: str, ip_rate: Rate,
                            **player: Any) -> _Reply:
    verdict = await scripts.address_gate(keys, address=address, limit_name=limit_name,
                                         rate=ip_rate)
    reply = await call(keys, address=address, ip_rate=ip_rate, address_verdict=verdict,
                       **player)
    if reply.reason == "ok":
        view = keys.at_address(address)
        await scripts.rate_limit(view, rate_key=view.ip_rate(limit_name, address),
                                 rate=ip_rate)
    return reply


def first_of_each_event(items: Sequence[BatchItem]) -> tuple[list[BatchItem], int]:
    """The batch's items with each event id's first only, and how many repeats were
    left out. ``lua/batch.lua`` counts a repeat inside its call as a duplicate; split
    by shard, one event id sent for two players would reach two calls and be
    accepted by both (counted once by Postgres, but answered as two)."""
    seen: set[str] = set()
    firsts = []
    for item in items:
        if item.event_id not in seen:
            seen.add(item.event_id)
            firsts.append(item)
    return firsts, len(items) - len(firsts)


def items_by_shard(keys: Keys, items: Sequence[BatchItem]) -> dict[int, list[BatchItem]]:
    """The batch's items per shard of their user, each part in the batch's order."""
    parts: dict[int, list[BatchItem]] = {}
    for item in items:
        parts.setdefault(keys.shard_of(item.user_id), []).append(item)
    return dict(sorted(parts.items()))


async def new_increments(client: Any, keys: Keys, backend_id: str,
                         parts: dict[int, list[BatchItem]], *, dedup_ttl_ms: int) -> int:
    """How many of the batch's event ids (``parts``: its items by shard,
    :func:`items_by_shard`) are new (not marked yet, first in their part): what
    the backend's limit is checked against, as on a single node, where duplicates
    cost nothing. The marks of each shard (its players' slot) are looked up
    together."""
    source = f"backend:{backend_id}"
    now_ms = int(time.time() * 1000)
    new = 0
    for shard, part in parts.items():
        distinct = list(dict.fromkeys(item.event_id for item in part))
        found = await marked(client, keys.shard(shard).event_marks(source), distinct,
                             now_ms=now_ms, ttl_ms=dedup_ttl_ms)
        new += found.count(False)
    return new


async def batch(scripts: Scripts, client: Any, keys: Keys, *, backend_id: str, jti: str,
                rate: Rate, items: Sequence[BatchItem], **common: Any) -> BatchReply:
    if not keys.sharded:
        return await scripts.batch(keys, backend_id=backend_id, jti=jti, rate=rate,
                                   items=items, **common)
    firsts, repeats = first_of_each_event(items)
    parts = items_by_shard(keys, firsts)
    cost = await new_increments(client, keys, backend_id, parts,
                                dedup_ttl_ms=common["dedup_ttl_ms"])
    gate = await scripts.backend_gate(keys, backend_id=backend_id, jti=jti, rate=rate,
                                      cost=cost)
    if gate.reason != "ok":
        return BatchReply(gate.reason, gate.retry_after_ms, 0, 0, [])
    accepted, duplicates, refused = 0, repeats, []
    for shard, part in parts.items():
        reply = await scripts.batch(keys, backend_id=backend_id, jti=jti, rate=rate,
                                    items=part, shard=shard, **common)
        accepted += reply.accepted
        duplicates += reply.duplicates
        refused += reply.refused
    if accepted:
        view = keys.player(backend_id)
        await scripts.rate_limit(view, rate_key=view.user_rate("backend", backend_id),
                                 rate=rate, cost=accepted)
    return BatchReply("ok", 0, accepted, duplicates, refused)


async def token_failure(scripts: Scripts, client: Any, keys: Keys, *, user_id: str,
                        address: str, failure: str, **thresholds: Any) -> TokenFailureReply:
    if not keys.sharded:
        return await scripts.token_failure(keys, user_id=user_id, address=address,
                                           failure=failure, **thresholds)
    flagged_now, user_failures = False, 0
    if user_id:
        mine = await scripts.token_failure(keys, user_id=user_id, address=address,
                                           failure=failure, part="user", **thresholds)
        flagged_now, user_failures = mine.flagged_now, mine.user_failures
    its = await scripts.token_failure(keys, user_id=user_id, address=address, failure=failure,
                                      part="address", **thresholds)
    if its.limited_now:
        evidence = f'{{"failures":{its.address_failures},"last":"{failure}"}}'
        await client.xadd(keys.player(user_id).fraud_stream, {
            "rule": "token_manipulation", "severity": "high", "action": "address_limited",
            "user_id": user_id, "client_addr": address, "evidence": evidence})
    return TokenFailureReply(user_failures, its.address_failures, flagged_now, its.limited_now)

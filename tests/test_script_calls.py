"""The typed script wrappers (scoreboard/script_calls.py) send what each script reads.

For every script with a fixed number of keys and arguments, the wrapper is called
on real Redis through a recording runner: the KEYS and ARGV it sent must be exactly
as many as the highest ``KEYS[n]`` and ``ARGV[n]`` the script's code reads (so a
key or argument added to a script and not to its wrapper fails here), and the reply
must come back typed. The variable-size scripts (batch, set_totals, apply_batch,
flag_users, fraud_batch) are exercised by the API, worker and board tests.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.crc import key_slot

from scoreboard.keys import Keys
from scoreboard.limits import Rate
from scoreboard.lua import LUA_DIR, register_scripts
from scoreboard.script_calls import (
    AddressVerdict,
    BoardPage,
    IncrementReply,
    Refusal,
    TokenFailureReply,
    TypedScript,
)
from tests.script_support import Recording
from tests.servers import Backing, fresh_name


def highest_read(name: str) -> tuple[int, int]:
    """The highest KEYS and ARGV index ``lua/<name>.lua`` reads (comments left out)."""
    code = "\n".join(line.split("--", 1)[0]
                     for line in (LUA_DIR / f"{name}.lua").read_text().splitlines())
    keys = [int(n) for n in re.findall(r"KEYS\[(\d+)\]", code)]
    args = [int(n) for n in re.findall(r"ARGV\[(\d+)\]", code)]
    return max(keys, default=0), max(args, default=0)


RATE = Rate(5, 60)
Scenario = Callable[[Any, Keys], Awaitable[Any]]

# name -> (a call of the wrapper with plausible values, the type of its reply)
CALLS: dict[str, tuple[Scenario, type]] = {
    "increment": (lambda s, k: s(
        k, user_id="u1", jti="j1", nonce="n1", address="192.0.2.1", event_id="at-n1",
        board="global", points=2, username="Ann", source="player", request_id="r1",
        user_rate=RATE, flagged_rate=RATE, ip_rate=RATE, dedup_ttl_ms=60_000, rapid_max=10,
        rapid_window_ms=1000, flag_duration_ms=60_000), IncrementReply),
    "action_token": (lambda s, k: s(
        k, user_id="u1", jti="j1", nonce="n1", address="192.0.2.1", user_rate=RATE,
        ip_rate=RATE, token_ttl_ms=60_000), Refusal),
    "rate_limit": (lambda s, k: s(k, rate_key=k.ip_rate("auth", "192.0.2.1"), rate=RATE),
                   Refusal),
    "token_failure": (lambda s, k: s(
        k, user_id="u1", address="192.0.2.1", failure="action_token_foreign",
        window_ms=60_000, to_flag=10, to_limit_address=30, address_limit_ms=60_000,
        flag_ms=60_000), TokenFailureReply),
    "rate_refusal": (lambda s, k: s(
        k, user_id="u1", address="192.0.2.1", endpoint="increment", window_ms=60_000,
        to_flag=20, flag_duration_ms=60_000), bool),
    "board_page": (lambda s, k: s(k, board="global", start=0, stop=9), BoardPage),
    "address_gate": (lambda s, k: s(k, address="192.0.2.1", limit_name="increment", rate=RATE),
                     AddressVerdict),
    "backend_gate": (lambda s, k: s(k, backend_id="b1", jti="j1", rate=RATE, cost=3), Refusal),
}
VERDICT = AddressVerdict(0, 0)


def _token_failure_part(part: str) -> Scenario:
    def call(script: Any, keys: Keys) -> Awaitable[Any]:
        sent: Awaitable[Any] = script(
            keys, user_id="u1", address="192.0.2.1", failure="action_token_foreign",
            window_ms=60_000, to_flag=10, to_limit_address=30, address_limit_ms=60_000,
            flag_ms=60_000, part=part)
        return sent
    return call


# The same wrappers as a sharded deployment calls them (scoreboard/sharded_calls.py):
# name -> (script, call); their arguments past the unsharded ones are sharded-only.
SHARDED_CALLS: dict[str, tuple[str, Scenario]] = {
    "increment (sharded)": ("increment", lambda s, k: s(
        k, user_id="u1", jti="j1", nonce="n1", address="192.0.2.1", event_id="at-n1",
        board="global", points=2, username="Ann", source="player", request_id="r1",
        user_rate=RATE, flagged_rate=RATE, ip_rate=RATE, dedup_ttl_ms=60_000, rapid_max=10,
        rapid_window_ms=1000, flag_duration_ms=60_000, address_verdict=VERDICT)),
    "action_token (sharded)": ("action_token", lambda s, k: s(
        k, user_id="u1", jti="j1", nonce="n1", address="192.0.2.1", user_rate=RATE,
        ip_rate=RATE, token_ttl_ms=60_000, address_verdict=VERDICT)),
    **{f"token_failure ({part}, sharded)": ("token_failure", _token_failure_part(part))
       for part in ("user", "address")},
}
# Arguments only a sharded call sends (the unsharded one sends that many fewer).
SHARDED_ONLY_ARGS = {"increment": 2, "action_token": 2, "token_failure": 1}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_wrapper_sends_what_its_script_reads(name: str, backing: Backing) -> None:
    call, reply_type = CALLS[name]
    keys = Keys(fresh_name("calls"))

    async def scenario() -> tuple[Recording, Any]:
        client = backing.async_redis(decode_responses=True)
        try:
            wrapper: TypedScript = getattr(register_scripts(client), name)
            recording = Recording(wrapper.script)
            return recording, await call(wrapper.through(recording), keys)
        finally:
            await client.aclose()

    recording, reply = asyncio.run(scenario())
    (sent_keys, sent_args), = recording.calls
    most_keys, most_args = highest_read(name)
    assert (len(sent_keys), len(sent_args)) == (most_keys,
                                                most_args - SHARDED_ONLY_ARGS.get(name, 0))
    assert all(key.startswith(keys.tag) for key in sent_keys), sent_keys
    assert isinstance(reply, reply_type)


@pytest.mark.parametrize("name", sorted(SHARDED_CALLS))
def test_each_sharded_call_sends_what_its_script_reads_in_one_slot(
        name: str, backing: Backing) -> None:
    """Sharded, every key of a call is in one slot (a cluster refuses the call
    otherwise), and the sharded-only arguments are sent."""
    script, call = SHARDED_CALLS[name]
    keys = Keys(fresh_name("calls"), shards=3)

    async def scenario() -> Recording:
        client = backing.async_redis(decode_responses=True)
        try:
            wrapper: TypedScript = getattr(register_scripts(client), script)
            recording = Recording(wrapper.script)
            await call(wrapper.through(recording), keys)
            return recording
        finally:
            await client.aclose()

    (sent_keys, sent_args), = asyncio.run(scenario()).calls
    most_keys, most_args = highest_read(script)
    assert (len(sent_keys), len(sent_args)) == (most_keys, most_args)
    assert len({key_slot(key.encode()) for key in sent_keys}) == 1, sent_keys


def test_the_increment_reply_is_read_by_position_only_in_its_wrapper(backing: Backing) -> None:
    """The first increment is accepted; the same token again is a replay (nothing written)."""
    keys = Keys(fresh_name("calls"))

    async def scenario() -> list[IncrementReply]:
        client = backing.async_redis(decode_responses=True)
        try:
            await client.set(keys.action_token("n1"), "u1")
            increment = register_scripts(client).increment
            return [await CALLS["increment"][0](increment, keys) for _ in range(2)]
        finally:
            await client.aclose()

    first, again = asyncio.run(scenario())
    assert first == IncrementReply("ok", 0, False)
    assert again.reason == "replayed"

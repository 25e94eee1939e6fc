"""The Lua script registry: every script in ``lua/``, registered once per client.

The scripts are package data: ``scoreboard/lua_scripts`` (in a checkout, a link
to the tree's ``lua/``), so an installed wheel carries them.

Each script is the shared prelude ``lua/lib/gcra.lua``, the other libraries
it uses (``LIBRARIES``), then the script's own file. ``register_script``
returns redis-py ``Script`` objects,
which call EVALSHA and reload the script on NOSCRIPT (after a Redis restart
or SCRIPT FLUSH), so callers never send the source on the hot path. Callers
never see them either: each is wrapped in the typed call of
``scoreboard.script_calls``, which owns its KEYS and ARGV order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoreboard.script_calls import (
    ActionTokenScript,
    AddressGateScript,
    ApplyBatchScript,
    BackendGateScript,
    BatchScript,
    BoardPageScript,
    FlagUsersScript,
    FraudBatchScript,
    IncrementScript,
    RateLimitScript,
    RateRefusalScript,
    SetTotalsScript,
    TokenFailureScript,
    WatchRanksScript,
)

LUA_DIR = Path(__file__).parent / "lua_scripts"
PRELUDE = LUA_DIR / "lib" / "gcra.lua"
# Scripts that share code besides the prelude, and the ``lua/lib/`` files they use.
LIBRARIES = {"set_totals": ("chunks", "board"), "apply_batch": ("chunks", "board"),
             "increment": ("marks", "entry", "address"), "action_token": ("address",),
             "batch": ("marks", "chunks", "entry")}


def script_source(name: str) -> str:
    """The full text sent to Redis for ``lua/<name>.lua``."""
    parts = [PRELUDE, *(LUA_DIR / "lib" / f"{lib}.lua" for lib in LIBRARIES.get(name, ())),
             LUA_DIR / f"{name}.lua"]
    return "\n".join(path.read_text() for path in parts)


@dataclass(frozen=True)
class Scripts:
    """Every script, each behind its typed wrapper (``scoreboard.script_calls``)."""

    increment: IncrementScript
    action_token: ActionTokenScript
    batch: BatchScript
    rate_limit: RateLimitScript
    set_totals: SetTotalsScript
    apply_batch: ApplyBatchScript
    board_page: BoardPageScript
    token_failure: TokenFailureScript
    rate_refusal: RateRefusalScript
    flag_users: FlagUsersScript
    fraud_batch: FraudBatchScript
    watch_ranks: WatchRanksScript
    address_gate: AddressGateScript
    backend_gate: BackendGateScript


def register_scripts(redis: Any) -> Scripts:
    """Register every script on ``redis`` (an async redis-py client), each in its
    typed wrapper; ``.script`` of a wrapper is the raw redis-py ``Script``."""

    def raw(name: str) -> Any:
        return redis.register_script(script_source(name))

    return Scripts(
        increment=IncrementScript(raw("increment")),
        action_token=ActionTokenScript(raw("action_token")), batch=BatchScript(raw("batch")),
        rate_limit=RateLimitScript(raw("rate_limit")),
        set_totals=SetTotalsScript(raw("set_totals")),
        apply_batch=ApplyBatchScript(raw("apply_batch")),
        board_page=BoardPageScript(raw("board_page")),
        token_failure=TokenFailureScript(raw("token_failure")),
        rate_refusal=RateRefusalScript(raw("rate_refusal")),
        flag_users=FlagUsersScript(raw("flag_users")),
        fraud_batch=FraudBatchScript(raw("fraud_batch")),
        watch_ranks=WatchRanksScript(raw("watch_ranks")),
        address_gate=AddressGateScript(raw("address_gate")),
        backend_gate=BackendGateScript(raw("backend_gate")))

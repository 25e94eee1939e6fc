"""The Lua script registry: every script in ``lua/``, registered once per client.

The scripts are package data: ``scoreboard/lua_scripts`` (in a checkout, a link
to the tree's ``lua/``), so an installed wheel carries them.

Each script is the shared prelude ``lua/lib/gcra.lua``, the other libraries
it uses (``LIBRARIES``), then the script's own file. ``register_script``
returns redis-py ``Script`` objects,
which call EVALSHA and reload the script on NOSCRIPT (after a Redis restart
or SCRIPT FLUSH), so callers never send the source on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).parent / "lua_scripts"
PRELUDE = LUA_DIR / "lib" / "gcra.lua"
# Scripts that share code besides the prelude, and the ``lua/lib/`` files they use.
LIBRARIES = {"set_totals": ("board",), "apply_batch": ("board",)}


def script_source(name: str) -> str:
    """The full text sent to Redis for ``lua/<name>.lua``."""
    parts = [PRELUDE, *(LUA_DIR / "lib" / f"{lib}.lua" for lib in LIBRARIES.get(name, ())),
             LUA_DIR / f"{name}.lua"]
    return "\n".join(path.read_text() for path in parts)


@dataclass(frozen=True)
class Scripts:
    increment: Any
    action_token: Any
    batch: Any
    rate_limit: Any
    set_totals: Any
    apply_batch: Any
    board_page: Any
    token_failure: Any
    rate_refusal: Any
    flag_users: Any
    fraud_batch: Any


def register_scripts(redis: Any) -> Scripts:
    """Register every script on ``redis`` (an async or sync redis-py client)."""
    return Scripts(**{name: redis.register_script(script_source(name))
                      for name in ("increment", "action_token", "batch", "rate_limit",
                                   "set_totals", "apply_batch", "board_page", "token_failure",
                                   "rate_refusal", "flag_users", "fraud_batch")})

"""A runner for the typed script wrappers that records each call's KEYS and ARGV.

With a real ``Script`` behind it, it forwards the call (the test sees both what was
sent and what Redis answered); without one it answers ``reply``, for tests of a
call's shape only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Recording:
    def __init__(self, script: Any = None, *, reply: Any = None) -> None:
        self.script = script
        self.reply = reply
        self.calls: list[tuple[list[Any], list[Any]]] = []

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                       client: Any = None) -> Any:
        self.calls.append((list(keys), list(args)))
        if self.script is None:
            return self.reply
        return await self.script(keys=keys, args=args, client=client)

"""Polling until a condition holds, for tests that wait on other processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], what: str = "the condition", timeout_s: float = 30,
             every_s: float = 0.1) -> Any:
    """``condition()``'s first true result, polled every ``every_s``; an
    AssertionError naming ``what`` when none comes within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)

"""Rate limits: the GCRA arithmetic, in plain Python.

The Lua scripts (``lua/*.lua``) run the same arithmetic inside Redis so that
the check and the update are atomic; this module is the reference they are
tested against, and where a limit's parameters come from.

GCRA (generic cell rate algorithm) keeps one number per key, the theoretical
arrival time ``tat``. A rate of ``count`` per ``period`` has an emission
interval ``T = period / count``; a request of cost ``c`` is allowed when
``max(tat, now) + c*T - period <= now``, which lets a burst of up to
``count`` through at once and then one every ``T``. Unlike fixed windows there
is no boundary at which twice the rate gets through; unlike a sliding log the
state is one number (milliseconds, kept to the microsecond), whatever the rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``period_s`` seconds."""

    count: int
    period_s: int

    def __post_init__(self) -> None:
        if self.count <= 0 or self.period_s <= 0:
            raise ValueError("count and period must be positive")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"COUNT/SECONDS"``, e.g. ``"5/60"`` for five a minute."""
        count, sep, period = text.partition("/")
        if not sep:
            raise ValueError("expected COUNT/SECONDS, e.g. 5/60")
        try:
            return cls(int(count), int(period))
        except ValueError:
            raise ValueError("expected COUNT/SECONDS with positive integers, e.g. 5/60") from None

    @property
    def period_ms(self) -> int:
        return self.period_s * 1000

    def as_args(self) -> tuple[int, int]:
        """The two script arguments that describe this rate."""
        return self.count, self.period_ms


@dataclass(frozen=True)
class Decision:
    allowed: bool
    new_tat_ms: float  # the state to store when allowed (unchanged when refused)
    retry_after_ms: int  # 0 when allowed


def ceil_to_microsecond(ms: float) -> float:
    return math.ceil(ms * 1000) / 1000


def gcra(tat_ms: float | None, now_ms: int, rate: Rate, cost: int = 1) -> Decision:
    """Decide one request of ``cost`` against ``rate``, given the stored ``tat``.

    ``now`` is whole milliseconds; the ``tat`` keeps microseconds, rounded up,
    so rounding can only make a limit stricter, by at most a microsecond a
    request (whole milliseconds would cap every key at 1,000 a second).
    ``cost`` larger than ``rate.count`` can never pass; callers refuse such a
    request as invalid rather than limited.
    """
    interval = rate.period_ms / rate.count
    start = now_ms if tat_ms is None or tat_ms < now_ms else tat_ms
    new_tat = ceil_to_microsecond(start + interval * cost)
    allow_at = new_tat - rate.period_ms
    if allow_at > now_ms:
        return Decision(False, start, math.ceil(allow_at - now_ms))
    return Decision(True, new_tat, 0)


def retry_after_seconds(retry_after_ms: int) -> int:
    """``Retry-After`` is whole seconds; round up so a client never retries early."""
    return max(1, -(-int(retry_after_ms) // 1000))

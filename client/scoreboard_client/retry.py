"""When to try a call again, and how long to wait first. Pure functions.

Retried: no answer at all (connection refused or reset, timeout) when the call
is safe to repeat, 429 and 503 (the service wrote nothing; ``Retry-After`` is
honoured). Never retried: any other refusal, which would only be refused again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scoreboard_client.errors import ApiError, RateLimited, Unavailable


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # in all, the first included
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` from 1):
        the service's ``Retry-After`` if it sent one, else capped exponential
        backoff with full jitter."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_delay_s * 4)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def worth_retrying(error: ApiError) -> bool:
    return isinstance(error, RateLimited | Unavailable)

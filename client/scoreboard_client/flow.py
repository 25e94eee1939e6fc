"""One call's whole conversation as a generator, without I/O: send, maybe wait
and send again, maybe refresh the session first. The async and sync clients
run the same generator (like websockets' sans-I/O protocol), so retries and
refreshes behave identically in both.

The generator yields a step (:class:`Send`, :class:`Sleep`, :class:`Refresh`)
and is sent back the step's result (an :class:`Answer` or :class:`Lost` for
``Send``, None otherwise); it returns the parsed answer or raises.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from scoreboard_client.calls import Call
from scoreboard_client.errors import TransportError, Unauthorized, api_error
from scoreboard_client.retry import RetryPolicy, worth_retrying

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    call: Call[Any]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Refresh:
    """Swap the refresh token for a new session, then the call is sent again."""


Step = Send | Sleep | Refresh


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    retry_after: str | None


@dataclass(frozen=True)
class Lost:
    """No answer. ``unsent`` when the connection was never made: the service
    cannot have acted on it."""

    url: str
    error: BaseException
    unsent: bool


def conversation(call: Call[T], policy: RetryPolicy, *,
                 can_refresh: bool) -> Generator[Step, Answer | Lost | None, T]:
    attempt, unsure, refreshed = 0, False, False
    while True:
        attempt += 1
        result = yield Send(call)
        if isinstance(result, Lost):
            if attempt >= policy.attempts or not (result.unsent or call.retry_when_unsure):
                raise TransportError(result.url, result.error)
            unsure = unsure or not result.unsent
            yield Sleep(policy.delay(attempt))
            continue
        assert isinstance(result, Answer)
        if 200 <= result.status < 300:
            return call.parse(result.body)
        error = api_error(result.status, result.body, result.retry_after)
        if unsure and call.after_lost_answer is not None:
            settled = call.after_lost_answer(error)
            if settled is not None:
                return settled
        if (isinstance(error, Unauthorized) and error.code == "token_expired"
                and call.authenticated and can_refresh and not refreshed):
            refreshed = True
            attempt -= 1
            yield Refresh()
            continue
        if worth_retrying(error) and attempt < policy.attempts:
            yield Sleep(policy.delay(attempt, error.retry_after_s))
            continue
        raise error

"""The exception tree of the service.

    ScoreboardError
    ├── ConfigError            a setting cannot be used (raised at start)
    ├── TokenError             a JWT or action token is refused
    │   ├── JWTError           -> 401
    │   └── ActionTokenError   -> 403
    └── RequestError           a request is refused before it touches anything
        (status and code chosen by the raiser; see ``ingest.responses``)

Exceptions carry attributes; the message is built in ``__str__``.
"""

from __future__ import annotations


class ScoreboardError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(ScoreboardError):
    def __init__(self, variable: str, value: str, reason: str) -> None:
        super().__init__(variable, value, reason)
        self.variable = variable
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid setting {self.variable}={self.value!r}: {self.reason}"


class TokenError(ScoreboardError):
    """A token was refused; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class JWTError(TokenError):
    """Missing, malformed, badly signed, expired or revoked access token."""


class ActionTokenError(TokenError):
    """Forged, expired, foreign or malformed action token."""


class RequestError(ScoreboardError):
    """A request refused with an HTTP status and an error code."""

    def __init__(self, status: int, code: str, detail: str, *,
                 field: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(status, code, detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.detail

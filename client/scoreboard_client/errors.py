"""What the client raises.

    ScoreboardClientError
    ├── ApiError             the service refused: its status and error envelope
    │   ├── Unauthorized     401 (after one refresh, where one could help)
    │   ├── Forbidden        403 (action token used/expired/foreign, banned, scope)
    │   ├── NotFound         404 (not ranked, no such board or endpoint)
    │   ├── RateLimited      429, with ``retry_after_s``
    │   └── Unavailable      503, with ``retry_after_s``
    └── TransportError       the service could not be reached, every attempt
"""

from __future__ import annotations


class ScoreboardClientError(Exception):
    """Base class of the client's errors."""


class ApiError(ScoreboardClientError):
    """A refusal: ``{"error": {"code", "message"[, "field"]}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class RateLimited(ApiError):
    pass


class Unavailable(ApiError):
    pass


class TransportError(ScoreboardClientError):
    """No answer from the service (connection refused, reset, timed out)."""

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(url, cause)
        self.url = url
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.url}: {self.cause!r}"


ERROR_CLASSES: dict[int, type[ApiError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound,
                                            429: RateLimited, 503: Unavailable}


def api_error(status: int, body: object, retry_after: str | None) -> ApiError:
    """The error for a refusal's status, envelope and ``Retry-After`` header."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": "unexpected_answer", "message": f"HTTP {status} without an envelope"}
    seconds = float(retry_after) if retry_after and retry_after.replace(".", "").isdigit() \
        else None
    kind = ERROR_CLASSES.get(status, ApiError)
    return kind(status, str(error.get("code")), str(error.get("message")),
                field=error.get("field"), retry_after_s=seconds)

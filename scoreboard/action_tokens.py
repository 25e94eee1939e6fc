"""One-time action tokens: ``base64url(payload).hexsig``.

The payload is compact JSON ``{"u": user_id, "b": board, "a": action, "t": issued_ms,
"n": nonce, "k": key_id}`` and ``hexsig`` is HMAC-SHA256 of the base64url text under
the key ``k``, so the board and the action (and through it the points) cannot be
changed without the key. Several
keys can be valid at once, so keys rotate without refusing tokens in flight.

This module is pure: it proves a token was made by us, for this user, less than
its lifetime ago. That it is unused is Redis's part (the increment script
consumes the nonce), checked only after this cheap check has passed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from scoreboard.errors import ActionTokenError

MAX_TOKEN_LENGTH = 512
SIGNATURE_HEX_LENGTH = 64


@dataclass(frozen=True)
class ActionToken:
    user_id: str
    board: str
    action: str
    issued_ms: int
    nonce: str
    key_id: str


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload_text: str) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, a fraction of hmac.new's Python object.
    return hmac.digest(key, payload_text.encode("ascii"), "sha256").hex()


def encode(token: ActionToken, key: bytes) -> str:
    """Serialise and sign ``token`` with ``key`` (the key of ``token.key_id``)."""
    payload = orjson.dumps({"u": token.user_id, "b": token.board, "a": token.action,
                            "t": token.issued_ms,
                            "n": token.nonce, "k": token.key_id})
    payload_text = _b64encode(payload)
    return f"{payload_text}.{_sign(key, payload_text)}"


def verify(text: str, *, keys: Mapping[str, bytes], user_id: str, now_ms: int,
           ttl_ms: int) -> ActionToken:
    """Return the token if ``text`` is ours, unexpired and issued to ``user_id``.

    Raises :class:`ActionTokenError` with code ``action_token_invalid`` (malformed,
    unknown key, bad signature), ``action_token_expired`` or
    ``action_token_foreign``. The signature is compared in constant time before
    anything in the payload is trusted.
    """
    if not isinstance(text, str) or len(text) > MAX_TOKEN_LENGTH:
        raise ActionTokenError("action_token_invalid", "action token is malformed")
    payload_text, sep, signature = text.rpartition(".")
    if (not sep or len(signature) != SIGNATURE_HEX_LENGTH or not payload_text.isascii()
            or not signature.isascii()):  # compare_digest raises on non-ASCII str
        raise ActionTokenError("action_token_invalid", "action token is malformed")
    try:
        payload = orjson.loads(_b64decode(payload_text))
        key_id = payload["k"]
        token = ActionToken(user_id=payload["u"], board=payload["b"], action=payload["a"],
                            issued_ms=payload["t"], nonce=payload["n"], key_id=key_id)
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise ActionTokenError("action_token_invalid", "action token is malformed") from None
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None or not hmac.compare_digest(_sign(key, payload_text), signature.lower()):
        raise ActionTokenError("action_token_invalid", "action token signature is invalid")
    if not (isinstance(token.user_id, str) and isinstance(token.issued_ms, int)
            and isinstance(token.board, str) and isinstance(token.action, str)
            and isinstance(token.nonce, str) and token.nonce.isalnum()):
        raise ActionTokenError("action_token_invalid", "action token is malformed")
    if token.user_id != user_id:
        raise ActionTokenError("action_token_foreign", "action token was issued to another user")
    if not token.issued_ms - 5_000 <= now_ms < token.issued_ms + ttl_ms:
        raise ExpiredActionToken(token)
    return token


class ExpiredActionToken(ActionTokenError):
    """A genuine token of this user, past its lifetime. It carries the token: the
    caller may still answer a retry of an increment that was accepted in time."""

    def __init__(self, token: ActionToken) -> None:
        super().__init__("action_token_expired", "action token has expired")
        self.token = token

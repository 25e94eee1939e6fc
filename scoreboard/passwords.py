"""Password hashing with scrypt, a memory-hard KDF from the standard library.

Stored form: ``scrypt$n$r$p$salt$hash`` (salt and hash base64), so the cost can
be raised later without invalidating existing hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

HASH_BYTES = 32


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=n * r * 128 * 2 + 1024 * 1024, dklen=HASH_BYTES)


def hash_password(password: str, *, n: int, r: int, p: int) -> str:
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, n, r, p)
    return "$".join(["scrypt", str(n), str(r), str(p),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash; False if unparseable."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)

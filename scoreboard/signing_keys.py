"""Signing keys on disk: RS256 keys for JWTs, HMAC keys for action tokens.

Development keys are generated under the data folder on first run (never
committed); production mounts its own files at the configured paths. Both
stores are append-only lists, oldest first: rotating adds a key, and the
newest signs while older ones still verify.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from scoreboard.jwt_tokens import SigningKey


def _new_kid() -> str:
    return datetime.now(UTC).strftime("k%Y%m%dT%H%M%S") + secrets.token_hex(2)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def add_jwt_key(directory: Path) -> str:
    """Generate a new RSA key in ``directory``; it becomes the signing key."""
    kid = _new_kid()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_private(directory / f"{kid}.pem", pem)
    return kid


def load_jwt_keys(directory: Path, *, create: bool = False) -> list[SigningKey]:
    """The keys in ``directory``, oldest first (file names sort by creation time)."""
    paths = sorted(directory.glob("*.pem")) if directory.is_dir() else []
    if not paths and create:
        add_jwt_key(directory)
        paths = sorted(directory.glob("*.pem"))
    keys = []
    for path in paths:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA private key")
        keys.append(SigningKey(kid=path.stem, private_key=key))
    if not keys:
        raise FileNotFoundError(f"no JWT signing keys in {directory}")
    return keys


def add_action_key(path: Path) -> str:
    """Append a new HMAC key to the key file; it becomes the signing key."""
    kid = _new_kid()
    line = f"{kid} {secrets.token_hex(32)}\n"
    if path.exists():
        with path.open("a") as handle:
            handle.write(line)
    else:
        _write_private(path, line.encode())
    return kid


def load_action_keys(path: Path, *, create: bool = False) -> dict[str, bytes]:
    """Key id -> secret, oldest first (dicts keep order: the last one signs)."""
    if not path.exists() and create:
        add_action_key(path)
    keys: dict[str, bytes] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        kid, _, secret = line.strip().partition(" ")
        try:
            keys[kid] = bytes.fromhex(secret.strip())
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'KEY_ID HEX_SECRET'") from None
    if not keys:
        raise ValueError(f"no action token keys in {path}")
    return keys

"""Accounts created outside the public API: game-backend logins."""

from __future__ import annotations

import secrets

import asyncpg

from scoreboard.passwords import hash_password

BACKEND_SCOPES = ["scores:write"]


def new_password() -> str:
    """32 URL-safe characters, never starting with ``-``: it is pasted after
    ``--password`` on command lines (examples/, the README), where a leading dash
    reads as an option (a generated password did, one time in 64)."""
    while True:
        password = secrets.token_urlsafe(24)
        if not password.startswith("-"):
            return password


async def create_backend_account(database_url: str, name: str, *, scrypt_n: int, scrypt_r: int,
                                 scrypt_p: int) -> tuple[str, str]:
    """Create a login with scope ``scores:write``; returns (user id, generated password).

    The password is shown once and only its hash is kept.
    """
    password = new_password()
    password_hash = hash_password(password, n=scrypt_n, r=scrypt_r, p=scrypt_p)
    user_id = "b_" + secrets.token_hex(8)
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        await connection.execute(
            "INSERT INTO users (user_id, username, password_hash, scopes) VALUES ($1, $2, $3, $4)",
            user_id, name, password_hash, BACKEND_SCOPES)
    finally:
        await connection.close()
    return user_id, password

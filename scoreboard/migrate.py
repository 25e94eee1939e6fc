"""Apply the numbered SQL files of ``sql/`` in order, each once.

Runs under a session advisory lock, so processes started together (several
workers, a compose one-shot) cannot apply a migration twice; each file runs
in its own transaction and is recorded in ``schema_migrations`` with it.

The files are package data: ``scoreboard/sql`` (in a checkout, a link to the
tree's ``sql/``), so an installed wheel carries them.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

SQL_DIR = Path(__file__).parent / "sql"
MIGRATION_LOCK = 0x5C0_4EB0A4D  # arbitrary, constant: the advisory lock key
FILE_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


def migration_files(sql_dir: Path = SQL_DIR) -> list[tuple[int, Path]]:
    """The migrations, by number; refuses duplicate numbers or stray names."""
    found: dict[int, Path] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named NNN_name.sql")
        number = int(match.group(1))
        if number in found:
            raise ValueError(f"{path.name}: number {number} is used by {found[number].name}")
        found[number] = path
    return sorted(found.items())


async def migrate(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply what is missing; return the names of the files applied."""
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row["version"] for row in
                await connection.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for number, path in migration_files(sql_dir):
            if number in done:
                continue
            async with connection.transaction():
                await connection.execute(path.read_text())
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    number, path.name)
            applied.append(path.name)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await connection.close()


async def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database ``name`` on the server of ``admin_dsn`` if it is missing."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r} is not a plain identifier")
    connection = await asyncpg.connect(admin_dsn, timeout=30)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await connection.close()

"""``scoreboard`` command: run the system, migrate, manage keys and backend clients.

``scoreboard run`` is what ``make run`` calls: with ``REDIS_URL`` /
``DATABASE_URL`` unset it starts the embedded Redis and Postgres under the
data folder, generates development keys there on first run, applies the
migrations, then runs every Procfile process (through honcho) until
interrupted, and stops the embedded servers after them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from scoreboard.accounts import create_backend_account
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis
from scoreboard.logs import configure_logging
from scoreboard.migrate import ensure_database, migrate
from scoreboard.settings import Settings, load_settings
from scoreboard.signing_keys import add_action_key, add_jwt_key, load_action_keys, load_jwt_keys

PROJECT_DIR = Path(__file__).resolve().parent.parent
EMBEDDED_DATABASE = "scoreboard"


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead of its own."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@contextmanager
def servers(settings: Settings) -> Iterator[Settings]:
    """The settings with both URLs set, starting embedded servers for the unset ones."""
    with ExitStack() as stack:
        redis_url, database_url = settings.redis_url, settings.database_url
        if redis_url is None:
            embedded_redis = EmbeddedRedis(settings.data_dir / "redis")
            redis_url = embedded_redis.start()
            stack.callback(embedded_redis.stop)
        if database_url is None:
            embedded_pg = EmbeddedPostgres(settings.data_dir / "postgres")
            admin_url = embedded_pg.start()
            stack.callback(embedded_pg.stop)
            asyncio.run(ensure_database(admin_url, EMBEDDED_DATABASE))
            database_url = with_database(admin_url, EMBEDDED_DATABASE)
        yield replace(settings, redis_url=redis_url, database_url=database_url)


def ensure_keys(settings: Settings) -> None:
    load_jwt_keys(settings.jwt_keys_path, create=True)
    load_action_keys(settings.action_keys_path, create=True)


def run(settings: Settings) -> int:
    ensure_keys(settings)
    with servers(settings) as ready:
        assert ready.database_url is not None and ready.redis_url is not None
        applied = asyncio.run(migrate(ready.database_url))
        print(f"migrations applied: {', '.join(applied) or 'none needed'}", flush=True)
        env = {**os.environ, "REDIS_URL": ready.redis_url, "DATABASE_URL": ready.database_url,
               "INGEST_HOST": ready.ingest_host, "INGEST_PORT": str(ready.ingest_port),
               "BROADCASTER_HOST": ready.broadcaster_host,
               "BROADCASTER_PORT": str(ready.broadcaster_port),
               "DATA_DIR": str(ready.data_dir.resolve()),
               # The Procfile's commands come from this interpreter's environment.
               "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                        os.environ.get("PATH", "")])}
        print(f"ingest on http://{ready.ingest_host}:{ready.ingest_port}", flush=True)
        # honcho gets the terminal's Ctrl-C itself and stops the processes; we
        # wait for it and only then stop the servers they were using.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            child = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-f",
                                      str(PROJECT_DIR / "Procfile"), "-d", str(PROJECT_DIR)],
                                     env=env)
            signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
            return child.wait()
        finally:
            signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scoreboard", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run every Procfile process (embedded servers by default)")
    commands.add_parser("migrate", help="apply the SQL migrations to DATABASE_URL")
    commands.add_parser("rotate-keys", help="add a new JWT key and action-token key")
    backend = commands.add_parser("create-backend",
                                  help="create a game-backend login with scope scores:write")
    backend.add_argument("name")
    args = parser.parse_args(argv)
    configure_logging()
    settings = load_settings()
    if args.command == "run":
        return run(settings)
    if args.command == "rotate-keys":
        print("new JWT key:", add_jwt_key(settings.jwt_keys_path))
        print("new action-token key:", add_action_key(settings.action_keys_path))
        return 0
    with servers(settings) as ready:
        assert ready.database_url is not None
        if args.command == "migrate":
            applied = asyncio.run(migrate(ready.database_url))
            print(f"migrations applied: {', '.join(applied) or 'none needed'}")
        elif args.command == "create-backend":
            asyncio.run(migrate(ready.database_url))
            _, password = asyncio.run(create_backend_account(
                ready.database_url, args.name, scrypt_n=settings.scrypt_n,
                scrypt_r=settings.scrypt_r, scrypt_p=settings.scrypt_p))
            print(f"backend {args.name!r} created; log in with this password: {password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

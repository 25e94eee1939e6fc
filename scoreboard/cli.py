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

import orjson

from scoreboard.accounts import create_backend_account
from scoreboard.admin import UnknownName, add_admin_parser, main_admin, require_board
from scoreboard.anomaly_scoring import add_anomaly_parser, main_anomaly
from scoreboard.console import start_banner
from scoreboard.db import with_database
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis
from scoreboard.history_cli import add_history_parsers, main_history
from scoreboard.logs import configure_logging
from scoreboard.migrate import ensure_database, migrate
from scoreboard.running import running_file as _running_file
from scoreboard.running import running_urls as _running_urls
from scoreboard.settings import Settings, load_settings
from scoreboard.signing_keys import add_action_key, add_jwt_key, load_action_keys, load_jwt_keys
from scoreboard.supervise import ServerWatch, supervised_procfile

PROJECT_DIR = Path(__file__).resolve().parent.parent
EMBEDDED_DATABASE = "scoreboard"


@contextmanager
def servers(settings: Settings) -> Iterator[Settings]:
    """The settings with both URLs set: the configured servers, or those of a running
    ``scoreboard run`` on the same data folder, or newly started embedded ones."""
    running = None
    if settings.redis_url is None and settings.database_url is None:
        running = _running_urls(settings)
    if running is not None:
        yield replace(settings, redis_url=running[0], database_url=running[1])
        return
    with ExitStack() as stack:
        redis_url, database_url = settings.redis_url, settings.database_url
        watch = ServerWatch()
        if redis_url is None:
            embedded_redis = EmbeddedRedis(settings.data_dir / "redis",
                                           maxmemory=settings.embedded_redis_maxmemory)
            redis_url = embedded_redis.start()
            stack.callback(embedded_redis.stop)
            watch.watch("redis", embedded_redis)
        if database_url is None:
            embedded_pg = EmbeddedPostgres(settings.data_dir / "postgres")
            admin_url = embedded_pg.start()
            stack.callback(embedded_pg.stop)
            asyncio.run(ensure_database(admin_url, EMBEDDED_DATABASE))
            database_url = with_database(admin_url, EMBEDDED_DATABASE)
            watch.watch("postgres", embedded_pg)
        stack.callback(watch.stop)  # runs first: a stop on purpose is not restarted
        yield replace(settings, redis_url=redis_url, database_url=database_url)


def ensure_keys(settings: Settings) -> None:
    load_jwt_keys(settings.jwt_keys_path, create=True)
    load_action_keys(settings.action_keys_path, create=True)


def _supervised_procfile(settings: Settings) -> Path:
    """The Procfile with each process restarted when it dies (scoreboard/supervise.py)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "Procfile.supervised"
    path.write_text(supervised_procfile((PROJECT_DIR / "Procfile").read_text()))
    return path


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
        print(start_banner(ready), flush=True)
        # Other commands (admin, rebuild-board) find the running servers here.
        running_file = _running_file(ready)
        running_file.write_bytes(orjson.dumps({"redis_url": ready.redis_url,
                                               "database_url": ready.database_url}))
        # honcho stops the processes on a stop signal (a terminal's Ctrl-C reaches
        # it directly; one sent to this process alone is passed on: honcho stops
        # once however often it is asked); we wait for it and only then stop the
        # servers they were using. A stop asked for (SIGINT, SIGTERM) is a clean
        # exit; a process dying is not.
        stop_requested = False
        child: subprocess.Popen[bytes] | None = None

        def on_stop(_signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            child = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-f",
                                      str(_supervised_procfile(ready)), "-d", str(PROJECT_DIR)],
                                     env=env)
            if stop_requested:  # asked before honcho was there to be told
                child.send_signal(signal.SIGTERM)
            status = child.wait()
            return 0 if stop_requested else status
        finally:
            running_file.unlink(missing_ok=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def _rebuild(settings: Settings, board: str) -> int:

    from scoreboard.board_writes import rebuild_board
    from scoreboard.db import create_pool
    from scoreboard.lua import register_scripts
    from scoreboard.redis_clients import redis_client

    assert settings.redis_url is not None and settings.database_url is not None
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster,
                          decode_responses=True)
    pool = await create_pool(settings.database_url)
    try:
        await require_board(pool, board)
        return await rebuild_board(client, pool, register_scripts(client),
                                   settings.keys, board)
    finally:
        await pool.close()
        await client.aclose()


def _describe_subcommands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Each command's own ``--help`` opens with what the command list says of it."""
    for listed in commands._choices_actions:
        subcommand = commands.choices[listed.dest]
        if subcommand.description is None:
            subcommand.description = listed.help


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scoreboard", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run every Procfile process (embedded servers by default)")
    commands.add_parser("migrate", help="apply the SQL migrations (to DATABASE_URL, else to"
                                        " make run's or the embedded Postgres)")
    commands.add_parser("init", help="generate signing keys if missing, then migrate")
    commands.add_parser("rotate-keys", help="add a new JWT key and action-token key")
    backend = commands.add_parser("create-backend",
                                  help="create a game-backend login with scope scores:write")
    backend.add_argument("name")
    rebuild = commands.add_parser("rebuild-board",
                                  help="recompute a board from Postgres and swap it in")
    rebuild.add_argument("board")
    add_admin_parser(commands)
    add_history_parsers(commands)
    add_anomaly_parser(commands)
    _describe_subcommands(commands)
    args = parser.parse_args(argv)
    configure_logging()
    settings = load_settings()
    if args.command == "run":
        return run(settings)
    if args.command == "rotate-keys":
        print("new JWT key:", add_jwt_key(settings.jwt_keys_path))
        print("new action-token key:", add_action_key(settings.action_keys_path))
        return 0
    if args.command == "init":
        ensure_keys(settings)
    with servers(settings) as ready:
        assert ready.database_url is not None
        if args.command in ("migrate", "init"):
            applied = asyncio.run(migrate(ready.database_url))
            print(f"migrations applied: {', '.join(applied) or 'none needed'}")
        elif args.command == "create-backend":
            asyncio.run(migrate(ready.database_url))
            _, password = asyncio.run(create_backend_account(
                ready.database_url, args.name, scrypt_n=settings.scrypt_n,
                scrypt_r=settings.scrypt_r, scrypt_p=settings.scrypt_p))
            print(f"backend {args.name!r} created; log in with this password: {password}")
        elif args.command == "rebuild-board":
            try:
                members = asyncio.run(_rebuild(ready, args.board))
            except UnknownName as exc:
                print(exc, file=sys.stderr)
                return 1
            print(f"board {args.board!r} rebuilt from Postgres: {members} members")
        elif args.command == "admin":
            return main_admin(args, ready)
        elif args.command in ("history", "history-checkpoints"):
            return main_history(args, ready)
        elif args.command == "anomaly-score":
            return main_anomaly(args, ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())

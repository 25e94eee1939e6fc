"""The installed wheel, on its own: ``scoreboard migrate``, then one increment.

Run by ``.ci/run`` with the python of a fresh virtualenv that has only the
wheel (and its dependencies) installed, from a folder outside the source
tree, so nothing can be read from a checkout: the Lua scripts and the
migrations must come from the package. It starts the embedded Redis and
Postgres (from the installed package) in a temporary folder, runs
``scoreboard migrate`` and ``scoreboard init`` against them, starts ONE
ingest process (``python -m ingest``, as the Procfile), registers a
player, logs in, takes an action token, posts one increment, and checks the
202 and the stream entry it wrote. Exit status 0 when all of that held.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

import scoreboard
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from scoreboard.keys import Keys
from scoreboard.stream_entry import unpacked


def call(url: str, body: dict[str, Any] | None = None,
         token: str | None = None) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON (GET without one); (status, JSON answer)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=None if body is None else
                                     json.dumps(body).encode(), headers=headers,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def expect(what: str, found: tuple[int, dict[str, Any]], status: int) -> dict[str, Any]:
    if found[0] != status:
        raise SystemExit(f"{what}: expected {status}, got {found[0]} {found[1]}")
    return found[1]


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ingest exited with {process.returncode} while starting")
        try:
            if call(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("ingest was not ready within 60 s")


def main() -> int:
    package = Path(scoreboard.__file__).resolve()
    if not package.is_relative_to(Path(sys.prefix).resolve()):
        raise SystemExit(f"scoreboard was imported from {package}, not from this virtualenv")
    with tempfile.TemporaryDirectory(prefix="wheel-smoke-") as folder:
        root = Path(folder)
        embedded_redis, embedded_pg = EmbeddedRedis(root / "redis"), EmbeddedPostgres(
            root / "postgres")
        redis_url = embedded_redis.start()
        try:
            admin_url = embedded_pg.start()
            try:
                return smoke(root, redis_url, admin_url)
            finally:
                embedded_pg.stop()
        finally:
            embedded_redis.stop()


def smoke(root: Path, redis_url: str, database_url: str) -> int:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "DATA_DIR": str(root / "data"), "KEY_PREFIX": "wheel", "SCRYPT_N": "1024",
           "LOG_LEVEL": "WARNING"}
    bin_dir = Path(sys.executable).parent
    for command in (["migrate"], ["init"]):
        done = subprocess.run([str(bin_dir / "scoreboard"), *command], env=env, cwd=root,
                              capture_output=True, text=True, timeout=120, check=False)
        print(f"scoreboard {' '.join(command)}: {done.stdout.strip()}")
        if done.returncode != 0:
            raise SystemExit(f"scoreboard {command[0]} failed:\n{done.stderr[-2000:]}")
    port = free_port()
    ingest = subprocess.Popen([sys.executable, "-m", "ingest", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/readyz", ingest)
        credentials = {"username": "wheel_player", "password": "a long enough password"}
        expect("register", call(url + "/api/auth/register", credentials), 201)
        login = expect("login", call(url + "/api/auth/login", credentials), 200)
        token = expect("action token", call(url + "/api/actions/token", {},
                                            login["access_token"]), 200)["action_token"]
        expect("increment", call(url + "/api/scores/increment",
                                 {"action_token": token},
                                 login["access_token"]), 202)
    finally:
        ingest.terminate()
        ingest.wait(timeout=30)
    # redis-py's sync client is typed as returning ``Awaitable | Any`` (shared stubs)
    client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = client.xrange(Keys("wheel").stream)
    client.close()
    # The server decides the points: global's one action, "play", is worth 1.
    if len(entries) != 1 or unpacked(entries[0][1]).get("points") != "1":
        raise SystemExit(f"expected one stream entry of 1 point, found {entries}")
    print(f"one increment from the installed wheel: 202, stream entry {entries[0][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

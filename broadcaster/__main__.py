"""``python -m broadcaster``: the broadcaster process (the Procfile's ``broadcaster``).

Each process binds its own listening socket with ``SO_REUSEPORT`` and the
kernel spreads new connections over them, so N processes serve one port and
each reads the boards itself (versions come from Redis: every process gives
the same version to the same state). ``BROADCASTER_PROCESSES=N`` starts N
such processes from one command; running the Procfile line N times does the
same. uvicorn runs each with the spectator WebSocket protocol as its ``ws``
class (broadcaster.ws_connection).

A scrape of ``/metrics`` lands on any one of the processes, so the processes
started here share a Prometheus multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``
if set, else a fresh temporary one removed at the end) and every process
answers for all of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from types import FrameType

import uvicorn

from broadcaster.ws_connection import SpectatorConnection
from scoreboard.settings import Settings, load_settings

CHILD_MARK = "SCOREBOARD_BROADCASTER_CHILD"


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> None:
    config = uvicorn.Config(
        "broadcaster.app:create_app", factory=True, loop="uvloop", http="httptools",
        ws=SpectatorConnection, ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=False, access_log=False, log_level=settings.log_level.lower(),
        backlog=4096,
        # client addresses: our own TRUSTED_PROXIES rule, not uvicorn's default
        proxy_headers=False)
    uvicorn.Server(config).run(
        sockets=[listening_socket(settings.broadcaster_host, settings.broadcaster_port)])


def supervise(count: int) -> int:
    """Run ``count`` broadcaster processes; stop them all on SIGTERM/SIGINT or when
    one exits (the process manager then restarts the command). Returns the exit code."""
    env = {**os.environ, CHILD_MARK: "1"}
    own_metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="scoreboard-broadcaster-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    try:
        return _run_children(count, env)
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def _run_children(count: int, env: dict[str, str]) -> int:
    children = [subprocess.Popen([sys.executable, "-m", "broadcaster"], env=env)
                for _ in range(count)]

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    first_exit = os.wait()  # whichever child ends first ends the group
    stop(signal.SIGTERM, None)
    for child in children:
        child.wait()
    return os.waitstatus_to_exitcode(first_exit[1])


def main() -> None:
    settings = load_settings()
    if settings.broadcaster_processes > 1 and CHILD_MARK not in os.environ:
        sys.exit(supervise(settings.broadcaster_processes))
    serve(settings)


if __name__ == "__main__":
    main()

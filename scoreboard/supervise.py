"""Keep ``make run``'s processes and embedded servers up: restart what dies, with backoff.

honcho (what ``scoreboard run`` uses to run the Procfile) stops every process
as soon as one exits. A worker killed by a Redis blip, or a crashed ingest,
would take the whole system down and clients would get "connection refused"
instead of a 503 they retry. So ``scoreboard run`` hands honcho a Procfile
whose every command runs under this module's wrapper::

    python -m scoreboard.supervise worker -- arq workers.main.WorkerSettings

The wrapper runs the command, and when it exits without being asked to stop
(any status), logs it and starts it again after a capped exponential delay,
which goes back to the base once a run has lasted ``stable_s``. The command
runs in a process group of its own: a stop signal (SIGTERM, SIGINT) to the
wrapper is passed on exactly once, the wrapper waits for the command and
exits with its status. On Linux the command is also killed if the wrapper is
(honcho's SIGKILL after its grace period), and the wrapper is asked to stop
if honcho itself dies, so none is left behind restarting.

``ServerWatch`` does the same for the embedded Redis and Postgres: a thread
that checks each server and starts it again, on the same port and data
folder, when it has died (Redis replays its AOF, Postgres its WAL).

Production runs under compose (``restart: unless-stopped``) or another
process manager, which do this themselves.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scoreboard.logs import configure_logging

logger = logging.getLogger("scoreboard.supervise")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Backoff:
    """Delay before restart ``n``: base * 2**(n-1), at most ``cap_s``; a run that
    lasted ``stable_s`` or more starts the count again."""

    base_s: float = 1.0
    cap_s: float = 30.0
    stable_s: float = 30.0

    def next_delay(self, failures_in_a_row: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** max(0, failures_in_a_row - 1))

    def failures_after(self, failures_in_a_row: int, ran_for_s: float) -> int:
        """The count of quick failures once a run of ``ran_for_s`` has ended."""
        return 1 if ran_for_s >= self.stable_s else failures_in_a_row + 1


def supervised_procfile(procfile: str, *, python: str = sys.executable) -> str:
    """The Procfile's text with each command run under the wrapper (pure).

    Commands stay shell text (honcho runs them with ``sh -c``), so ``${VAR:-x}``
    in them is still expanded; ``exec`` keeps the wrapper the shell's process.
    """
    lines = []
    for line in procfile.splitlines():
        name, sep, command = line.partition(":")
        if not sep or not name.strip() or line.lstrip().startswith("#"):
            lines.append(line)
            continue
        lines.append(f"{name}: exec {python} -m scoreboard.supervise {name.strip()} -- "
                     f"{command.strip()}")
    return "\n".join(lines) + "\n"


class Restarter:
    """Runs one command until asked to stop, restarting it whenever it exits."""

    def __init__(self, name: str, command: Sequence[str], backoff: Backoff) -> None:
        self.name = name
        self.command = list(command)
        self.backoff = backoff
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def stop(self, signum: int, _frame: object = None) -> None:
        """A stop was asked for: pass it on, and do not restart."""
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def run(self) -> int:
        failures = 0
        while True:
            started = time.monotonic()
            self.child = subprocess.Popen(self.command, process_group=0,
                                          preexec_fn=_die_with_parent)
            status = self.child.wait()
            if self.stopping.is_set():
                return status if status >= 0 else 128 - status  # as a shell reports it
            failures = self.backoff.failures_after(failures, time.monotonic() - started)
            delay = self.backoff.next_delay(failures)
            self.restarts += 1
            logger.error("%s exited unexpectedly with status %s after %.1f s; restart %d in "
                         "%.1f s", self.name, status, time.monotonic() - started,
                         self.restarts, delay)
            if self.stopping.wait(delay):
                return 0


def _parent_death_signal(signum: int) -> None:
    """Linux sends ``signum`` to this process when its parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def _die_with_parent() -> None:
    """In the child, before exec: killed when the wrapper dies."""
    _parent_death_signal(signal.SIGKILL)


class Server(Protocol):
    def start(self) -> str: ...
    def alive(self) -> bool: ...


class ServerWatch:
    """A thread restarting embedded servers that died (not those stopped on purpose)."""

    def __init__(self, backoff: Backoff | None = None, *, every_s: float = 0.5) -> None:
        self.backoff = backoff or Backoff(base_s=0.5, cap_s=10.0)
        self.every_s = every_s
        self.servers: list[tuple[str, Server]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-watch", daemon=True)

    def watch(self, name: str, server: Server) -> None:
        self.servers.append((name, server))
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the servers are stopped on purpose)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        failures = {name: 0 for name, _ in self.servers}
        while not self._stop.wait(self.every_s):
            for name, server in list(self.servers):
                if self._stop.is_set() or server.alive():
                    continue
                failures[name] = failures.get(name, 0) + 1
                delay = self.backoff.next_delay(failures[name])
                logger.error("embedded %s died; restarting it in %.1f s (same port and data)",
                             name, delay)
                if self._stop.wait(delay):
                    return
                try:
                    server.start()
                except Exception:
                    logger.exception("embedded %s did not start; trying again", name)
                    continue
                logger.warning("embedded %s is back", name)
                failures[name] = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scoreboard.supervise",
        description="Run a command; restart it with capped backoff whenever it exits "
                    "without being asked to stop.")
    parser.add_argument("name", help="the process's name in log lines")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the command and its arguments")
    parser.add_argument("--base-s", type=float, default=1.0)
    parser.add_argument("--cap-s", type=float, default=30.0)
    parser.add_argument("--stable-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    configure_logging()
    restarter = Restarter(args.name, command,
                          Backoff(base_s=args.base_s, cap_s=args.cap_s, stable_s=args.stable_s))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, restarter.stop)
    # Asked to stop when the process manager dies (honcho killed with SIGKILL):
    # otherwise the wrapper, alone, would restart its command for ever.
    parent = os.getppid()
    _parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above took effect
        return 0
    return restarter.run()


if __name__ == "__main__":
    sys.exit(main())

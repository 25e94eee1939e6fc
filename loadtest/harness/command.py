"""The ``main`` of every benchmark command: one place for signals and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import uvloop

from loadtest import BenchError

Args = TypeVar("Args")


def benchmark_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>``, described by its docstring's first paragraph."""
    return argparse.ArgumentParser(prog=f"python -m {module}",
                                   description=(doc or "").split("\n\n")[0])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_command(name: str, parse_args: Callable[[list[str] | None], Args],
                run: Callable[[Args], int], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, then ``run``; 2 with the message on a :class:`BenchError`, 130 on
    Ctrl-C. SIGTERM unwinds like Ctrl-C, so the ``with`` blocks of ``run`` stop every
    process it started."""
    args = parse_args(None if argv is None else list(argv))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; every process it started is stopped", file=sys.stderr)
        return 130


class Main(Protocol):
    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def command(name: str, parse_args: Callable[[list[str] | None], Args],
            run: Callable[[Args], int]) -> Main:
    """A benchmark's ``main(argv=None)``: :func:`run_command` of ``parse_args`` and ``run``."""
    def main(argv: Sequence[str] | None = None) -> int:
        return run_command(name, parse_args, run, argv)
    return main


def job_main(module: str,
             drive: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]],
             argv: Sequence[str]) -> int:
    """The ``main`` of a load generator run by ``processes.run_job``: ``drive`` the
    JSON job of ``argv[0]`` on uvloop (as the servers run), write its result to
    ``argv[1]``."""
    if len(argv) != 2:
        print(f"usage: python -m {module} JOB.json RESULT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(drive(job))
    with contextlib.suppress(FileNotFoundError):
        Path(argv[1]).unlink()
    Path(argv[1]).write_bytes(orjson.dumps(result))
    return 0

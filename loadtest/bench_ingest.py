"""Ingest benchmark: increments/s of ONE ingest process, next to the raw Redis
rate of the very script each increment runs.

    python -m loadtest.bench_ingest [--duration 20 --concurrency 64 ...]

One run gives two figures on the same Redis, and their ratio:

1. HTTP. A closed-loop client keeps ``--concurrency`` POST
   /api/scores/increment in flight against one uvicorn ingest process (as
   the Procfile runs it) for ``--duration`` seconds after a warm-up. Every
   request carries a fresh action token fetched beforehand, so every one
   takes the accepted path (one EVALSHA of ``increment.lua`` that consumes
   the token and XADDs); only 202s are counted, and at the end the stream
   length must equal the number of 202s.
2. Raw. ``redis-benchmark`` calls EVALSHA of the same script SHA with keys
   and arguments of the same shape, so HTTP/raw says how much of one Redis
   core one ingest process can use.

The client runs in a process of its own (``loadtest.load_generator``; its
docstring says why it is not httpx by default): the machine this was written
on has 2 cores, shared by ingest, Redis and the client. The report gives,
from /proc and Redis's INFO, the CPU each of them used during the measured
window, so a reader can tell which one limited the figure.

Rate limits are raised (``HIGH_RATE``), the rapid-actions rule never flags
(it still runs) and action tokens live an hour, so the figures measure cost,
not policy. Nothing is aimed anywhere but 127.0.0.1:
the embedded Redis and Postgres are started in a temporary folder unless
``REDIS_URL`` / ``DATABASE_URL`` name loopback servers, in which case a fresh
database and key prefix are used and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis

from loadtest import BenchError
from loadtest.ingest_anchor import (
    UVICORN_FLAGS,
    backend_headers,
    batch_requests,
    rate,
    report_line,
    token_requests,
    uvicorn_process,
)
from loadtest.load_generator import (
    INCREMENT_PATH,
    encode_post,
    machine_busy_s,
    open_connection,
)
from loadtest.raw_script import (
    RawResult,
    report_raw,
    rewrite_aof,
    run_raw,
    share,
    stream_length,
)
from loadtest.system import Backing, delete_keys, start_backing
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.settings import load_settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
HIGH_RATE = "100000000/60"  # far above anything one machine can send
TOKEN_TTL_S = 3600  # tokens are fetched before the run; they must outlive it
RAPID_MAX_ACTIONS = 1_000_000_000


def background_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by whatever else runs on the machine, sampled before we
    start anything: a benchmark on a shared machine must say when it was not alone."""
    before, started = machine_busy_s(), time.perf_counter()
    time.sleep(seconds)
    return (machine_busy_s() - before) / (time.perf_counter() - started)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


# --- Servers: Redis and Postgres from loadtest.system, then ONE ingest process ---------


def ingest_env(backing: Backing) -> dict[str, str]:
    """The ingest process's environment: the run's servers and names, limits out of the way."""
    return {**os.environ, "REDIS_URL": backing.redis_url, "DATABASE_URL": backing.database_url,
            "KEY_PREFIX": backing.key_prefix, "JWT_KEYS_DIR": str(backing.keys_dir / "jwt"),
            "ACTION_KEYS_FILE": str(backing.keys_dir / "action-token-keys"),
            # LOG_LEVEL at its default (INFO): the access log is written, as in production.
            "SCRYPT_N": "1024", "LOG_LEVEL": "INFO", "ACTION_TOKEN_TTL_S": str(TOKEN_TTL_S),
            "MAX_BACKLOG": str(10**9),  # no worker runs: backpressure would refuse the batches
            "INCREMENT_RATE": HIGH_RATE, "ACTION_TOKEN_RATE": HIGH_RATE, "IP_RATE": HIGH_RATE,
            "AUTH_IP_RATE": HIGH_RATE, "TRUSTED_PROXIES": "127.0.0.1/32",
            # The rapid-actions rule still runs (its ZSET work is in the script) but
            # never flags: a flagged player would fall to the reduced limit.
            "RAPID_MAX_ACTIONS": str(RAPID_MAX_ACTIONS),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn drains and closes its pools), then SIGKILL after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def ingest_process(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """ONE ingest process, started as the Procfile starts it; yields (url, pid)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "ingest.app:create_app",
               "--host", "127.0.0.1", "--port", str(port), *UVICORN_FLAGS]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"ingest did not become ready; its log:\n"
                                 f"{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, process.pid
    finally:
        stop_process(process)


# --- Set-up over HTTP: players and their action tokens ---------------------------------


def expect(response: httpx.Response, status: int) -> dict[str, Any]:
    """The JSON body of a set-up call, or a BenchError saying what the server said."""
    if response.status_code != status:
        raise BenchError(f"{response.request.method} {response.request.url.path}: expected "
                         f"{status}, got {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def player_address(index: int) -> str:
    """Player ``index``'s address, from 198.18.0.0/15 (RFC 2544: benchmarking)."""
    return f"198.{18 + index // 65536}.{index // 256 % 256}.{index % 256}"


async def create_players(url: str, count: int, parallel: int = 8) -> list[dict[str, str]]:
    """Register and log in ``count`` players; returns the headers each sends.

    Each player speaks from an address of its own (``X-Forwarded-For``, ingest
    trusting 127.0.0.1 as its proxy, as behind a load balancer): with every
    request on one address, the per-IP GCRA key would cap the run (see
    BENCHMARKS.md: a rate above 1000/s per key is held to 1000/s)."""
    run_id = secrets.token_hex(3)
    semaphore = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(index: int) -> dict[str, str]:
            credentials = {"username": f"bench_{run_id}_{index}",
                           "password": secrets.token_urlsafe(12)}
            address = {"X-Forwarded-For": player_address(index)}
            async with semaphore:
                expect(await client.post("/api/auth/register", json=credentials,
                                         headers=address), 201)
                login = expect(await client.post("/api/auth/login", json=credentials,
                                                 headers=address), 200)
            return {"Authorization": f"Bearer {login['access_token']}", **address}

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def fetch_tokens(url: str, players: list[dict[str, str]], count: int,
                       concurrency: int) -> tuple[list[tuple[dict[str, str], str]], float]:
    """``count`` action tokens, round-robin over the players so consecutive
    increments come from different users. Returns (headers, increment body)
    pairs and the rate the tokens came at (tokens/s).

    Uses the load generator's cheap client at the same concurrency, so the
    rate reflects the server, and predicts the increment rate well enough
    to size the token supply."""
    owners = collections.deque(players[i % len(players)] for i in range(count))
    requests: list[tuple[dict[str, str], str]] = []
    host = urlsplit(url).netloc

    async def worker() -> None:
        connection = await open_connection(url)
        try:
            while owners:
                headers = owners.popleft()
                status, body = await connection.post(
                    encode_post(host, "/api/actions/token", headers, b""))
                if status != 200:
                    raise BenchError(f"POST /api/actions/token: {status} {body[:300]!r}")
                requests.append((headers, orjson.dumps({
                    "action_token": orjson.loads(body)["action_token"]}).decode()))
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return requests, count / (time.perf_counter() - started)


def prepare_requests(url: str, players: list[dict[str, str]], args: argparse.Namespace
                     ) -> tuple[list[tuple[dict[str, str], str]], float]:
    """Enough tokens for warm-up + window. Unless ``--tokens`` is given, the
    count comes from the rate of a first batch: issuing a token costs the
    server about what an increment does, so it predicts the increment rate;
    ``--token-margin`` covers the difference, and running out is reported."""
    if args.tokens:
        return asyncio.run(fetch_tokens(url, players, args.tokens, args.concurrency))
    first, rate = asyncio.run(fetch_tokens(url, players, 3000, args.concurrency))
    wanted = min(math.ceil(rate * (args.warmup + args.duration) * args.token_margin),
                 args.max_tokens)
    if wanted <= len(first):
        return first, rate
    rest, _ = asyncio.run(fetch_tokens(url, players, wanted - len(first), args.concurrency))
    return first + rest, rate


# --- The run and its report -------------------------------------------------------------


def machine_line() -> str:
    """CPU count and model, kernel, Python: what a figure must be read against."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def limit_notes(cpu: dict[str, float], window_s: float, cores: int) -> list[str]:
    """Plain-language reading of the CPU split: which party was saturated."""
    notes = []
    ingest, generator = cpu["ingest_cpu_s"] / window_s, cpu["generator_cpu_s"] / window_s
    redis_share, machine = cpu["redis_cpu_s"] / window_s, cpu["machine_busy_s"] / window_s
    if ingest >= 0.9:
        notes.append("the ingest process was CPU-bound (one process = one event loop = one "
                     "core at most): it is the limit of the HTTP figure")
    if machine >= 0.9 * cores:
        notes.append(f"the machine was saturated ({machine:.2f} of {cores} cores busy): the "
                     f"load generator's {generator:.2f} cores were taken from the same pool, "
                     "so ingest alone on a free core would do somewhat better")
    elif generator >= 0.9:
        notes.append("the load generator was CPU-bound: the HTTP figure is a lower bound")
    if redis_share >= 0.9:
        notes.append("redis-server was CPU-bound")
    others = machine - ingest - generator - redis_share
    if others > 0.15:
        notes.append(f"other processes on the machine used {others:.2f} cores during the "
                     "window: the figure is disturbed, rerun on a quiet machine")
    if not notes:
        notes.append("no party was saturated: latency (round trips) bounds the figure; "
                     "try more --concurrency")
    return notes


def report_http(args: argparse.Namespace, http: dict[str, Any], stream_length: int) -> bool:
    """Print the HTTP figures; return whether the stream check passed."""
    window_s, statuses, latencies = http["window_s"], http["window_statuses"], http[
        "latencies_ms"]
    accepted = statuses.get("202", 0)
    cpu, cores = http["cpu_s"], os.cpu_count() or 1
    others_s = max(0.0, cpu["machine_busy_s"] - cpu["ingest_cpu_s"] - cpu["redis_cpu_s"]
                   - cpu["generator_cpu_s"])
    client = ("raw HTTP/1.1 client (httptools)" if args.client == "raw"
              else "httpx, one AsyncClient per connection")
    print(f"\nHTTP  POST {INCREMENT_PATH}: closed loop, {args.concurrency} connections, "
          f"{client} on uvloop in its own process, {args.warmup:g} s warm-up")
    print(f"  accepted (202)    {accepted:,} in {window_s:.2f} s = "
          f"{accepted / window_s:,.0f} increments/s")
    print(f"  other outcomes    {({k: v for k, v in statuses.items() if k != '202'}) or 'none'}")
    print(f"  latency (202)     p50 {percentile(latencies, 0.5):.2f} ms, "
          f"p99 {percentile(latencies, 0.99):.2f} ms (as the client saw it)")
    print(f"  CPU in window     ingest {share(cpu['ingest_cpu_s'], window_s)}, redis-server "
          f"{share(cpu['redis_cpu_s'], window_s)}, load generator "
          f"{share(cpu['generator_cpu_s'], window_s)}, everything else "
          f"{share(others_s, window_s)}; {cpu['machine_busy_s'] / window_s:.2f} of "
          f"{cores} cores busy")
    if accepted:
        print(f"  CPU per increment ingest {1e6 * cpu['ingest_cpu_s'] / accepted:,.0f} µs, "
              f"redis-server {1e6 * cpu['redis_cpu_s'] / accepted:,.0f} µs, client "
              f"{1e6 * cpu['generator_cpu_s'] / accepted:,.0f} µs")
    if cpu["redis_forks"]:
        print("  WARNING: Redis forked (AOF rewrite / save) during the window")
    if http["exhausted"]:
        print("  WARNING: the action tokens ran out before the window's end; the window "
              "was cut short (pass a larger --tokens or --token-margin)")
    if http["stuck"]:
        print(f"  WARNING: {http['stuck']} requests never answered")
    total_accepted = http["total_statuses"].get("202", 0)
    check_ok = bool(stream_length == total_accepted)
    print(f"  stream check      XLEN {stream_length:,} vs 202s received {total_accepted:,} "
          f"(warm-up + window + tail): {'OK' if check_ok else 'MISMATCH'}")
    for note in limit_notes(cpu, window_s, cores):
        print(f"  limit             {note}")
    return check_ok


def report(args: argparse.Namespace, backing: Backing, background: float, players: int,
           tokens: int, token_rate: float, http: dict[str, Any], stream_length: int,
           raw: RawResult | None) -> bool:
    """Print the whole report; return whether the stream check passed."""
    print("\n=== Ingest benchmark: one ingest process ===")
    print(f"machine     {machine_line()}")
    print(f"background  {background:.2f} cores busy before the run started"
          + ("  WARNING: the machine was not idle; the figures are disturbed"
             if background > 0.15 else ""))
    print(f"servers     redis {'embedded' if backing.redis_embedded else 'REDIS_URL'} "
          f"(AOF everysec), postgres {'embedded' if backing.database_embedded else 'DATABASE_URL'}"
          " (not on the increment path); no workers running")
    print(f"set-up      {players} players, one address each (X-Forwarded-For), {tokens:,} "
          f"action tokens fetched at {token_rate:,.0f}/s, limits {HIGH_RATE}, rapid-actions "
          f"rule at {RAPID_MAX_ACTIONS:,} (runs, never flags)")
    check_ok = report_http(args, http, stream_length)
    if raw is not None:
        report_raw(raw)
        http_rate = http["window_statuses"].get("202", 0) / http["window_s"]
        print(f"\nHTTP / raw        {http_rate:,.0f} / {raw.rps:,.0f} = {http_rate / raw.rps:.3f}"
              f" (one ingest process drives {100 * http_rate / raw.rps:.0f}% of what Redis "
              "runs of this script)")
    print()
    return check_ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_ingest",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20, help="measured seconds (20)")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds first (3)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight, one connection each (64)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator's HTTP client (raw; see loadtest/load_generator.py)")
    parser.add_argument("--players", type=int, default=200, help="registered users (200)")
    parser.add_argument("--tokens", type=int, default=0,
                        help="action tokens to fetch (default: estimated from a first batch)")
    parser.add_argument("--token-margin", type=float, default=1.6,
                        help="tokens fetched per estimated increment (1.6)")
    parser.add_argument("--max-tokens", type=int, default=400_000, help="cap (400000)")
    parser.add_argument("--raw-requests", type=int, default=100_000,
                        help="redis-benchmark EVALSHA calls (100000)")
    parser.add_argument("--raw-keys", type=int, default=2_000_000,
                        help="token keys set for redis-benchmark to draw from (2000000)")
    parser.add_argument("--raw-clients", type=int, default=0,
                        help="redis-benchmark connections (default: --concurrency)")
    parser.add_argument("--skip-raw", action="store_true", help="HTTP figure only")
    parser.add_argument("--batches", type=int, default=300,
                        help="batches sent in the batch part (300); 0 skips it")
    parser.add_argument("--batch-size", type=int, default=1000, help="increments each (1000)")
    parser.add_argument("--batch-concurrency", type=int, default=4,
                        help="batches in flight (4)")
    parser.add_argument("--skip-anchor", action="store_true",
                        help="no token part and no bare Starlette route")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1..600 s and --warmup 0..60 s")
    if not 1 <= args.concurrency <= 1024 or not 1 <= args.players <= 100_000:
        parser.error("--concurrency must be 1..1024 and --players 1..100000")
    if not 1_000 <= args.raw_keys <= 50_000_000 or args.raw_requests < 1:
        parser.error("--raw-keys must be 1000..50000000 and --raw-requests positive")
    return args


def run_load(args: argparse.Namespace, root: Path, url: str, ingest_pid: int,
             redis_url: str, requests: list[tuple[dict[str, str], str]],
             **job_options: Any) -> dict[str, Any]:
    """The measured HTTP run, in the load-generator process; its result. ``job_options``
    override the job (``path``, ``cycle``, ``concurrency``)."""
    job = {"url": url, "client": args.client, "concurrency": args.concurrency,
           "warmup_s": args.warmup, "duration_s": args.duration, "ingest_pid": ingest_pid,
           "redis_url": redis_url, "requests": requests, **job_options}
    job_path, result_path = root / "job.json", root / "result.json"
    job_path.write_bytes(orjson.dumps(job))
    generator = subprocess.Popen([sys.executable, "-m", "loadtest.load_generator",
                                  str(job_path), str(result_path)], cwd=PROJECT_DIR)
    try:
        generator.wait(timeout=args.warmup + args.duration + 120)
    except subprocess.TimeoutExpired:
        raise BenchError("the load generator did not finish in time") from None
    finally:
        stop_process(generator)
    if generator.returncode != 0:
        raise BenchError(f"the load generator failed with status {generator.returncode}")
    result: dict[str, Any] = orjson.loads(result_path.read_bytes())
    return result


def run(args: argparse.Namespace) -> int:
    benchmark_binary = shutil.which("redis-benchmark")
    if benchmark_binary is None and not args.skip_raw:
        raise BenchError("redis-benchmark is not on PATH; install it (apt-get install "
                         "redis-tools) or pass --skip-raw")
    background = background_cores()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        print("starting Redis and Postgres, migrating a fresh database…", flush=True)
        backing = start_backing(stack, root)
        raw_prefix = backing.key_prefix + "_raw"
        if not backing.redis_embedded:
            stack.callback(delete_keys, backing.redis_url, [backing.key_prefix, raw_prefix])
        env = ingest_env(backing)
        url, ingest_pid = stack.enter_context(ingest_process(env, root / "ingest.log"))
        print(f"ingest on {url} (pid {ingest_pid}); registering {args.players} players…",
              flush=True)
        players = asyncio.run(create_players(url, args.players))
        print("fetching action tokens…", flush=True)
        requests, token_rate = prepare_requests(url, players, args)
        print(f"{len(requests):,} tokens ready; driving increments for {args.warmup:g} + "
              f"{args.duration:g} s…", flush=True)
        client = stack.enter_context(contextlib.closing(redis.Redis.from_url(backing.redis_url)))
        rewrite_aof(client)
        http = run_load(args, root, url, ingest_pid, backing.redis_url, requests)
        xlen = stream_length(client, Keys(backing.key_prefix))
        raw = None
        if benchmark_binary is not None and not args.skip_raw:
            print("running redis-benchmark EVALSHA of the same script…", flush=True)
            raw = run_raw(benchmark_binary, backing.redis_url, load_settings(env), raw_prefix,
                          requests=args.raw_requests, keyspace=args.raw_keys,
                          clients=args.raw_clients or args.concurrency)
        ok = report(args, backing, background, len(players), len(requests), token_rate, http,
                    xlen, raw)
        run_anchor_parts(args, root, env, backing, url, ingest_pid, players, requests, http)
        print("stopping the processes started…", flush=True)
    return 0 if ok else 1


def run_anchor_parts(args: argparse.Namespace, root: Path, env: dict[str, str],
                     backing: Backing, url: str, ingest_pid: int,
                     players: list[dict[str, str]],
                     requests: list[tuple[dict[str, str], str]], http: dict[str, Any]) -> None:
    """The action-token part, the batch part and the bare route, then the ratios."""
    tokens = batches = None
    if not args.skip_anchor:
        print("driving POST /api/actions/token…", flush=True)
        tokens = run_load(args, root, url, ingest_pid, backing.redis_url,
                          token_requests(players, len(players)), path="/api/actions/token",
                          cycle=True)
    if args.batches:
        print(f"driving POST /api/scores/batch ({args.batches} batches of "
              f"{args.batch_size})…", flush=True)
        batches = run_load(args, root, url, ingest_pid, backing.redis_url,
                           batch_requests(backend_headers(url, backing.database_url),
                                          args.batches, args.batch_size),
                           path="/api/scores/batch", concurrency=args.batch_concurrency)
    bare_rps = None
    if not args.skip_anchor:
        print("driving the bare Starlette route…", flush=True)
        with uvicorn_process("loadtest.ingest_anchor:bare_app", env, root / "bare.log",
                             ready_path=None) as (bare_url, bare_pid):
            bare = run_load(args, root, bare_url, bare_pid, backing.redis_url, requests,
                            cycle=True)
        bare_rps = rate(bare)
    print(f"\nSame run, same client ({args.client}, {args.concurrency} connections; batches "
          f"{args.batch_concurrency}), {args.warmup:g} s warm-up, {args.duration:g} s window, "
          "access log at its default (on); CPU is the server process's")
    if bare_rps is not None:
        print(report_line("bare Starlette JSON route", bare, bare_rps))
    if tokens is not None:
        print(report_line("POST /api/actions/token", tokens, bare_rps))
    print(report_line("POST /api/scores/increment", http, bare_rps))
    if batches is not None:
        print(report_line(f"POST /api/scores/batch ({args.batch_size} each)", batches, None,
                          per=args.batch_size))
    print()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(parse_args(argv))
    except BenchError as exc:
        print(f"bench_ingest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_ingest: interrupted; every process it started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

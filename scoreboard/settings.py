"""The one settings object, read from the environment once at start.

Every process calls :func:`load_settings` in its entry point and passes the
result (or values from it) down as keyword arguments; nothing else reads
``os.environ``. A value that cannot be parsed fails at start with the name of
the variable, never later on a request.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scoreboard.errors import ConfigError
from scoreboard.keys import Keys
from scoreboard.limits import Rate

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
TIRELESS_SPAN_HOURS = 24  # the tireless rule looks at the last this many hours


@dataclass(frozen=True)
class Settings:
    """All configuration of every process. Secrets are hidden from ``repr``."""

    # Servers. ``None`` means: the run command starts the embedded ones.
    redis_url: str | None = field(default=None, repr=False)
    database_url: str | None = field(default=None, repr=False)
    key_prefix: str = "sb"
    # Redis Cluster (scoreboard/keys.py, scoreboard/redis_clients.py): REDIS_URL is
    # then any node of the cluster; players are spread over ``redis_shards`` shards
    # (their keys and streams), each shard a slot of its own. ``redis_shards`` above
    # 1 on a single node works too (the same names, one server). Set once per
    # deployment: changing it moves players to other shards.
    redis_cluster: bool = False
    redis_shards: int = 1
    # arq's own queue on a plain Redis of its own when REDIS_URL is a cluster (arq
    # 0.28 speaks to one node: its job keys are not hash-tagged). Empty: REDIS_URL.
    arq_redis_url: str = field(default="", repr=False)
    data_dir: Path = Path(".local")

    # HTTP.
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8000
    broadcaster_host: str = "127.0.0.1"
    broadcaster_port: int = 8001
    max_body_bytes: int = 256 * 1024
    trusted_proxies: tuple[IPNetwork, ...] = ()
    cors_allowed_origins: str = ""  # comma-separated browser origins, * for any; empty: none

    # Tokens.
    jwt_keys_dir: Path | None = None
    jwt_issuer: str = "live-scoreboard"
    jwt_audience: str = "live-scoreboard-api"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    action_keys_file: Path | None = None
    action_token_ttl_s: int = 60

    # Scores.
    max_points_per_increment: int = 1000
    max_batch_increments: int = 1000
    # How long ingest remembers a backend's event id in Redis and answers a
    # repeat as a duplicate. Not what makes an event count once (the worker's
    # ``counted_events`` does, forever): past the window a repeat is accepted
    # into the stream and persisted as nothing. 10 minutes covers a backend's
    # retries of a batch whose answer it lost (seconds to minutes, 503s during
    # a Redis restart included) and costs about 110 bytes of Redis per
    # accepted increment for the window: 66 MB at 1,000/s, where 7 days was 66 GB.
    dedup_ttl_s: int = 600
    board_refresh_s: float = 2.0  # how often ingest re-reads the board definitions
    # Windows' periods (scoreboard/archives.py): a period is archived (frozen in
    # Postgres) this long after its end, time for entries accepted before the
    # end to be persisted; its Redis keys expire this long after that.
    period_archive_grace_s: int = 300
    period_key_ttl_s: int = 3600
    # Backpressure: writes are refused (503 overloaded) while the consumer group
    # has more than this many entries not acknowledged. About 115 MB of Redis at
    # ~230 bytes an entry, and a bit over a minute of one worker's drain rate:
    # far below EMBEDDED_REDIS_MAXMEMORY, far above a healthy backlog.
    max_backlog: int = 500_000
    backlog_check_ms: int = 200  # how often ingest measures the backlog

    # Limits (count per period in seconds; GCRA, bursts up to the count).
    action_token_rate: Rate = Rate(10, 60)
    increment_rate: Rate = Rate(5, 60)
    flagged_increment_rate: Rate = Rate(1, 60)
    ip_rate: Rate = Rate(600, 60)
    auth_ip_rate: Rate = Rate(30, 60)
    backend_rate: Rate = Rate(600_000, 60)

    # Passwords (scrypt; n * r * 128 bytes of memory per hash: 16 MiB here).
    scrypt_n: int = 2**14
    scrypt_r: int = 8
    scrypt_p: int = 1

    # Reads and spectators.
    rank_ties: str = "competition"  # or "ordinal": see scoreboard/ranking.py
    top_cache_ms: int = 100
    snapshot_size: int = 10
    snapshot_interval_ms: int = 100
    revision_poll_ms: int = 1000
    ws_allowed_origins: str = "*"  # comma-separated Origin values, or * for any
    ws_max_per_ip: int = 50
    ws_max_message_bytes: int = 4096
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    ws_send_timeout_s: float = 5.0
    # Unsent bytes a spectator's socket may hold before it skips to the newest
    # snapshot (about 16 snapshots of 1 KB: a client this far behind is stale).
    ws_write_buffer_bytes: int = 16 * 1024
    # Players one spectator connection may follow at once (the rank feed).
    ws_max_watches: int = 10
    # Broadcaster processes sharing one port (SO_REUSEPORT); each reads the boards itself.
    broadcaster_processes: int = 1

    # Fraud rules (docs/fraud.md).
    rapid_max_actions: int = 8  # more than this many accepted ...
    rapid_window_ms: int = 10_000  # ... within this window flags the user
    # The automatic ladder: a user's first offence within OFFENCE_WINDOW_S is a flag
    # for FLAG_DURATION_S, the second a ban for TEMP_BAN_S, the third a ban for good.
    flag_duration_s: int = 3600
    temp_ban_s: int = 24 * 3600
    offence_window_s: int = 30 * 24 * 3600
    token_failure_window_s: int = 3600
    token_failures_to_flag: int = 10  # per user, within the window: an offence
    token_failures_to_limit_address: int = 30  # per address, within the window
    address_limit_s: int = 900
    night_start_hour: int = 2
    night_end_hour: int = 5
    fraud_timezone: str = "UTC"
    velocity_z_threshold: float = 3.0
    velocity_min_history_hours: int = 6
    # Added with the fraud simulator (0 turns each of these rules off).
    rate_refusals_to_flag: int = 20  # per-user 429s within the window flag the user
    rate_refusal_window_s: int = 60
    cadence_actions: int = 8  # the last this many accepted actions, when their gaps ...
    cadence_max_cv: float = 0.003  # ... vary less than this (std/mean), flag the user
    cadence_window_s: int = 900  # ... and they all fall within this window
    # ... gaps first reduced to whole periods of the shortest, up to this many (a timer
    # whose ticks the limiter refuses now and then); 1: plain gaps
    cadence_max_multiple: int = 3
    farm_min_accounts: int = 5  # this many accounts accepted from one address ...
    farm_window_s: int = 600  # ... within this window, each with at least ...
    farm_busy_actions: int = 30  # ... this many accepts in the window (a machine's pace), ...
    farm_busy_share: float = 0.8  # ... making this share of the address's active accounts
    tireless_hours: int = 18  # accepts in this many of the last 24 hours flag the user
    activity_hour_s: int = 3600  # the hour of the tireless rule (a simulator scales it)
    top_action_run: int = 30  # this many accepts in a row at the board's top price flag
    # The learned anomaly score (scoreboard/anomaly.py): reviews, never restrictions.
    # Off by default: it has not earned its place (docs/fraud.md); needs the "anomaly" extra.
    anomaly_scoring: bool = False  # the worker's pass every ANOMALY_EVERY_S
    anomaly_every_s: int = 3600  # a pass scores the accounts active within this period ...
    anomaly_window_s: int = 86400  # ... trained on every account of this window
    anomaly_min_actions: int = 10  # accounts with fewer actions are neither trained on nor scored
    anomaly_min_score: float = 0.65  # s(x) at or above this: a review
    anomaly_seed: int = 0

    # Workers.
    consumer_group: str = "persisters"
    consumer_name: str = ""  # empty: "<hostname>-worker"; set one per process on a host
    worker_batch_max: int = 1000
    # Batches of one consumer in Postgres at once, each on a connection of its own
    # (workers/consumer.py); 1 persists one batch after the other. 2 measured
    # faster (BENCHMARKS.md, "Two batches in flight per worker").
    worker_in_flight: int = 2
    worker_block_ms: int = 1000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    # Every this many minutes (from each hour's start) a worker sets every board to
    # Postgres's totals (workers/jobs.reconcile_boards), repairing a Redis that lost
    # writes; 0 turns it off. It reads every board of the database: deployments
    # sharing one database under several KEY_PREFIXes (the test suite) turn it off.
    board_reconcile_minutes: int = 15
    # Fault injection for chaos tests only: the probability that a worker exits
    # right after a Postgres commit, before the boards are set and XACK is sent.
    chaos_exit_after_commit: float = 0.0
    # Chaos tests only: the file a worker marks each batch's commit and XACK in,
    # and the batch after whose commit it waits to be killed (workers/chaos.py).
    chaos_marker_file: str = ""
    chaos_hold_after_commits: int = 0

    # History (scoreboard/history.py): ``as_of`` starts from a checkpoint of every
    # (board, user) total written this often, and replays the actions after it.
    history_checkpoint_hours: int = 24
    # A checkpoint covers only actions older than this margin below the point
    # where every stream entry is acknowledged (committed): none still in flight.
    history_checkpoint_lag_s: int = 300
    history_checkpoints_per_run: int = 100  # a long history is caught up over runs
    # Partitions of ``actions`` older than this many months (besides the current
    # one) are dropped by a scheduled job; 0 keeps everything.
    retention_months: int = 0

    # Observability.
    log_level: str = "INFO"
    access_log: bool = True  # ingest: one JSON line per request, at INFO
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9101  # 0: the worker serves no metrics
    # Ingest as several server processes: prometheus_client keeps every value
    # in files in this (empty at start) folder and /metrics merges them.
    prometheus_multiproc_dir: str = ""

    # The embedded Redis refuses writes (noeviction) past this, instead of
    # evicting keys or being killed by the machine running out of memory.
    embedded_redis_maxmemory: str = "1gb"  # as redis.conf spells it: 512mb, 2gb, ...

    @property
    def allowed_origins(self) -> frozenset[str] | None:
        """None: any Origin is accepted."""
        origins = frozenset(o.strip() for o in self.ws_allowed_origins.split(",") if o.strip())
        return None if "*" in origins else origins

    @property
    def keys(self) -> Keys:
        """The key names of this deployment (sharded as configured)."""
        return Keys(self.key_prefix, shards=self.redis_shards, cluster=self.redis_cluster)

    @property
    def consumer(self) -> str:
        return self.consumer_name or f"{socket.gethostname()}-worker"

    @property
    def jwt_keys_path(self) -> Path:
        return self.jwt_keys_dir or self.data_dir / "keys" / "jwt"

    @property
    def action_keys_path(self) -> Path:
        return self.action_keys_file or self.data_dir / "keys" / "action-token-keys"


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, raw, "expected an integer") from None


def _parse_networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False)
                     for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(name, raw, str(exc)) from None


def _parse_rate(name: str, raw: str) -> Rate:
    try:
        return Rate.parse(raw)
    except ValueError as exc:
        raise ConfigError(name, raw, str(exc)) from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``).

    Each field ``foo_bar`` is read from ``FOO_BAR``; unset variables keep the
    default. Empty ``REDIS_URL`` / ``DATABASE_URL`` count as unset.
    """
    env = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = env.get(f.name.upper())
        if raw is None or (raw == "" and f.name in ("redis_url", "database_url")):
            continue
        current = getattr(defaults, f.name)
        name = f.name.upper()
        if isinstance(current, float):
            try:
                values[f.name] = float(raw)
            except ValueError:
                raise ConfigError(name, raw, "expected a number") from None
        elif isinstance(current, Rate):
            values[f.name] = _parse_rate(name, raw)
        elif isinstance(current, bool):
            values[f.name] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, int):
            values[f.name] = _parse_int(name, raw)
        elif f.name == "trusted_proxies":
            values[f.name] = _parse_networks(name, raw)
        elif f.name in ("data_dir", "jwt_keys_dir", "action_keys_file"):
            values[f.name] = Path(raw)
        else:
            values[f.name] = raw
    settings = Settings(**values)  # type: ignore[arg-type]
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    for name in ("ingest_port", "broadcaster_port", "worker_metrics_port"):
        port = getattr(settings, name)
        if not 0 <= port <= 65535:
            raise ConfigError(name.upper(), str(port), "not a TCP port")
    for name in ("max_body_bytes", "max_points_per_increment", "max_batch_increments",
                 "action_token_ttl_s", "access_token_ttl_s", "refresh_token_ttl_s", "dedup_ttl_s",
                 "worker_batch_max", "worker_in_flight", "worker_block_ms", "claim_idle_ms",
                 "max_deliveries",
                 "snapshot_size", "snapshot_interval_ms", "revision_poll_ms", "ws_max_per_ip",
                 "ws_max_message_bytes", "ws_write_buffer_bytes", "ws_max_watches",
                 "broadcaster_processes",
                 "rapid_max_actions", "rapid_window_ms",
                 "flag_duration_s", "token_failure_window_s", "token_failures_to_flag",
                 "token_failures_to_limit_address", "address_limit_s", "temp_ban_s",
                 "offence_window_s", "farm_busy_actions", "activity_hour_s",
                 "max_backlog", "backlog_check_ms", "board_refresh_s",
                 "period_archive_grace_s", "period_key_ttl_s",
                 "rate_refusal_window_s", "cadence_window_s", "farm_window_s",
                 "history_checkpoint_hours", "history_checkpoints_per_run", "redis_shards",
                 "cadence_max_multiple", "anomaly_every_s", "anomaly_window_s",
                 "anomaly_min_actions"):
        if getattr(settings, name) <= 0:
            raise ConfigError(name.upper(), str(getattr(settings, name)), "must be positive")
    for name in ("rate_refusals_to_flag", "cadence_actions", "cadence_max_cv",
                 "farm_min_accounts", "tireless_hours", "top_action_run"):
        if getattr(settings, name) < 0:
            raise ConfigError(name.upper(), str(getattr(settings, name)),
                              "must be zero (rule off) or positive")
    if not 0 <= settings.board_reconcile_minutes <= 60:
        raise ConfigError("BOARD_RECONCILE_MINUTES", str(settings.board_reconcile_minutes),
                          "must be 0 (off) to 60 minutes")
    for name in ("retention_months", "history_checkpoint_lag_s"):
        if getattr(settings, name) < 0:
            raise ConfigError(name.upper(), str(getattr(settings, name)),
                              "must be zero or positive (RETENTION_MONTHS 0: keep everything)")
    if settings.dedup_ttl_s < settings.action_token_ttl_s:
        raise ConfigError("DEDUP_TTL_S", str(settings.dedup_ttl_s),
                          f"must be at least ACTION_TOKEN_TTL_S ({settings.action_token_ttl_s}):"
                          " an action token sent again while valid is known by its marker")
    if 0 < settings.cadence_actions < 3:
        raise ConfigError("CADENCE_ACTIONS", str(settings.cadence_actions),
                          "needs at least 3 actions (two gaps), or 0 for off")
    try:
        ZoneInfo(settings.fraud_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("FRAUD_TIMEZONE", settings.fraud_timezone, "unknown time zone") from None
    if not 0 <= settings.night_start_hour < settings.night_end_hour <= 24:
        raise ConfigError("NIGHT_START_HOUR", str(settings.night_start_hour),
                          "night hours must satisfy 0 <= start < end <= 24")
    if settings.tireless_hours > TIRELESS_SPAN_HOURS:
        raise ConfigError("TIRELESS_HOURS", str(settings.tireless_hours),
                          f"at most {TIRELESS_SPAN_HOURS} (hours of a day), or 0 for off")
    if not 0 < settings.anomaly_min_score < 1:
        raise ConfigError("ANOMALY_MIN_SCORE", str(settings.anomaly_min_score),
                          "must be in (0, 1): the IsolationForest's score")
    if not 0 < settings.farm_busy_share <= 1:
        raise ConfigError("FARM_BUSY_SHARE", str(settings.farm_busy_share),
                          "must be a share in (0, 1]")
    if settings.rank_ties not in ("competition", "ordinal"):
        raise ConfigError("RANK_TIES", settings.rank_ties, "must be competition or ordinal")
    if not settings.key_prefix or any(c in settings.key_prefix for c in "{} "):
        raise ConfigError("KEY_PREFIX", settings.key_prefix,
                          "must be non-empty, without braces or spaces")

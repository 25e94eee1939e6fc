"""What ``scoreboard run`` (``make run``) prints before its processes' logs: a
banner with every address a person may want to open, one per line."""

from __future__ import annotations

from scoreboard.names import DEFAULT_BOARD
from scoreboard.settings import Settings


def start_banner(settings: Settings) -> str:
    """Every URL of the run: the API and its docs, the spectator page, the live
    feed, each process's metrics. Pure: the settings say where each one is."""
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    broadcaster = f"http://{settings.broadcaster_host}:{settings.broadcaster_port}"
    live = f"ws://{settings.broadcaster_host}:{settings.broadcaster_port}"
    if settings.worker_metrics_port:
        worker_metrics = (f"http://{settings.worker_metrics_host}:"
                          f"{settings.worker_metrics_port}/metrics")
    else:
        worker_metrics = "off (WORKER_METRICS_PORT=0)"
    rows = [("API", ingest),
            ("API docs", f"{ingest}/docs"),
            ("OpenAPI", f"{ingest}/openapi.json"),
            ("spectator page", f"{broadcaster}/"),
            ("live feed", f"{live}/ws?board={DEFAULT_BOARD}"
                          f"  (SSE: {broadcaster}/sse?board={DEFAULT_BOARD})"),
            ("metrics", f"{ingest}/metrics (ingest)"),
            ("", f"{broadcaster}/metrics (broadcaster)"),
            ("", f"{worker_metrics} (worker)"),
            ("data", f"{settings.data_dir}/")]
    width = max(len(label) for label, _ in rows)
    lines = ["live scoreboard: starting ingest, worker and broadcaster (Ctrl-C stops them)"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)

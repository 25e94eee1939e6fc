"""The deployment files, checked by reading them (no Docker engine runs here):
the compose file's commands must be the Procfile's, every service has a health
check, and Prometheus and Grafana are wired to ops/."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from tests.servers import PROJECT_DIR

OPS = PROJECT_DIR / "ops"
# Services that run once and exit 0: no health check, not restarted.
ONE_SHOTS = {"migrate", "migrate-cluster", "redis-cluster-init"}


def procfile() -> dict[str, str]:
    lines = (PROJECT_DIR / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def expand(command: str, environment: Mapping[str, str]) -> list[str]:
    """A Procfile line as the shell would run it: ``${NAME:-default}`` and ``$NAME``
    replaced from ``environment``, then split into words."""
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1) or match.group(3), match.group(2) or ""
        return str(environment.get(name, default))
    expanded = re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}|\$([A-Z_][A-Z0-9_]*)", replace,
                      command)
    return shlex.split(expanded)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_the_procfile_commands() -> None:
    services = compose()["services"]
    processes = procfile()
    assert set(processes) == {"ingest", "worker", "broadcaster"}
    for name, command in processes.items():
        service = services[name]
        environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        assert service["command"] == expand(command, environment), name
        # Each runs against the compose file's Redis and Postgres, after the init.
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert environment["DATABASE_URL"].startswith("postgresql://")
        assert service["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully"


def test_compose_has_every_service_with_health_checks() -> None:
    document = compose()
    services = document["services"]
    assert set(services) >= {"redis", "postgres", "migrate", "ingest", "worker", "broadcaster",
                             "prometheus", "grafana"}
    for name, service in services.items():
        if name not in ONE_SHOTS:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "--appendonly" in services["redis"]["command"]
    # Prometheus reads ops/ (the scrape targets are the compose services, on the
    # ports the processes listen on); Grafana is provisioned with the dashboard.
    prometheus_volumes = " ".join(services["prometheus"]["volumes"])
    assert "./ops/prometheus.yml:" in prometheus_volumes
    assert "./ops/alerts.yml:" in prometheus_volumes
    grafana_volumes = " ".join(services["grafana"]["volumes"])
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning" in grafana_volumes
    assert "./ops/grafana/dashboard.json:/var/lib/grafana/dashboards/" in grafana_volumes
    scrape_config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"]
               for job in scrape_config["scrape_configs"]}
    assert targets == {"ingest": ["ingest:8000"], "broadcaster": ["broadcaster:8001"],
                       "worker": ["worker:9101"]}
    worker_env = services["worker"]["environment"]
    assert worker_env["WORKER_METRICS_PORT"] == "9101"
    assert worker_env["WORKER_METRICS_HOST"] == "0.0.0.0"
    dashboard = json.loads((OPS / "grafana" / "dashboard.json").read_text())
    datasource = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]
            if panel["type"] != "row"}
    assert uids == {datasource["datasources"][0]["uid"]}


def test_compose_cluster_profile_runs_the_same_processes_on_a_cluster() -> None:
    """``docker compose --profile cluster up``: three cluster-enabled Redis masters,
    a one-shot that forms the cluster, and ingest, worker and broadcaster with the
    single-node services' commands, pointed at the cluster (arq on the plain Redis),
    after their own init; none of it starts without the profile."""
    services = compose()["services"]
    cluster = {name for name, service in services.items()
               if "cluster" in (service.get("profiles") or [])}
    assert cluster == {"redis-node-1", "redis-node-2", "redis-node-3", "redis-cluster-init",
                       "migrate-cluster", "ingest-cluster", "worker-cluster",
                       "broadcaster-cluster"}
    assert all(not service.get("profiles") for name, service in services.items()
               if name not in cluster)
    for node in ("redis-node-1", "redis-node-2", "redis-node-3"):
        command = services[node]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert "--appendonly" in command
    init = services["redis-cluster-init"]
    assert "redis-cli --cluster create" in init["command"][0]
    assert set(init["depends_on"]) == {"redis-node-1", "redis-node-2", "redis-node-3"}
    assert services["migrate-cluster"]["depends_on"]["redis-cluster-init"]["condition"] == \
        "service_completed_successfully"
    for name in ("ingest", "worker", "broadcaster"):
        service = services[f"{name}-cluster"]
        assert service["command"] == services[name]["command"], name
        environment = {k: str(v) for k, v in service["environment"].items()}
        assert environment["REDIS_CLUSTER"] == "1" and environment["REDIS_SHARDS"] == "3"
        assert environment["REDIS_URL"].startswith("redis://redis-node-")
        assert environment["ARQ_REDIS_URL"].startswith("redis://redis:")
        assert environment["DATABASE_URL"] != services[name]["environment"]["DATABASE_URL"]
        assert service["depends_on"]["migrate-cluster"]["condition"] == \
            "service_completed_successfully"

"""Prometheus for real: Debian's ``prometheus`` scrapes the test's own ingest, worker
and broadcaster, and every alert expression (ops/alerts.yml) and dashboard query
(ops/grafana/dashboard.json) is evaluated through its HTTP API.

Each expression must parse, and every series selector in it must match series that
Prometheus has scraped, so a renamed series, label or job fails here. The scrape
config is ops/prometheus.yml with its targets replaced by the test's processes (same
job names) and 1 s intervals; the rules are ops/alerts.yml itself.

Series that only exist once something went wrong are made to exist: a second ingest
whose Redis is gone answers /readyz with 503 (``status=~"5.."``), a broken stream
entry is dead-lettered, a forged access token counts a fraud event, and a second
spectator from one address is refused (``spectators_dropped_total``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import websockets.exceptions
import yaml
from websockets.sync.client import connect as ws_connect

from scoreboard.embedded import free_port
from tests.conftest import Api, new_address
from tests.ops_support import increments, scrape, system, value
from tests.servers import PROJECT_DIR, Backing, fresh_name, ingest_server, stop_process
from tests.waiting import wait_for

OPS = PROJECT_DIR / "ops"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# --- the expressions and the selectors in them (pure) ---------------------------------------


def alert_expressions() -> dict[str, str]:
    """Alert name -> expression, from ops/alerts.yml."""
    groups = yaml.safe_load((OPS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"].strip() for group in groups for rule in group["rules"]}


def dashboard_queries() -> dict[str, str]:
    """"panel title #n" -> query, for every target of every panel (nested rows too)."""
    found: dict[str, str] = {}

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for number, target in enumerate(panel.get("targets", []), 1):
                if "expr" in target:
                    found[f"{panel.get('title')} #{number}"] = target["expr"]
            walk(panel.get("panels", []))

    walk(json.loads((OPS / "grafana" / "dashboard.json").read_text())["panels"])
    return found


# Grouping clauses name labels, not series; strings, ranges and numbers hold no names.
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d[\w.]*)
  | (?P<name>[A-Za-z_:][\w:]*)\s*(?P<matchers>\{(?:"(?:[^"\\]|\\.)*"|[^"}])*\})?(?P<call>\s*\()?
  | (?P<bare>\{(?:"(?:[^"\\]|\\.)*"|[^"}])*\})
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def selectors(expression: str) -> list[str]:
    """The series selectors of a PromQL expression (``name{matchers}``), in order,
    without their ranges: what must match scraped series for the expression to mean
    anything. Functions and aggregations (a name followed by ``(``) are not series."""
    found = []
    for token in _TOKEN.finditer(_GROUPING.sub(" ", expression)):
        if token["bare"]:
            found.append(token["bare"])
        elif token["name"] and not token["call"] and token["name"] not in _KEYWORDS:
            found.append(token["name"] + (token["matchers"] or ""))
    return found


_ALTERNATIVES = re.compile(r'(\w+)=~"([\w:-]+(?:\|[\w:-]+)+)"')


def alternatives(selector: str) -> list[str]:
    """``selector`` once per alternative of a regex matcher that lists plain values
    (``job=~"a|b"`` -> ``job="a"``, ``job="b"``): each listed value must exist, not
    just one of them. Other selectors as they are."""
    found = _ALTERNATIVES.search(selector)
    if found is None:
        return [selector]
    label, values = found.groups()
    return [variant for value in values.split("|") for variant in alternatives(
        selector[:found.start()] + f'{label}="{value}"' + selector[found.end():])]


def test_selectors_are_the_series_an_expression_names() -> None:
    assert selectors(
        'histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{job="ingest", '
        'route=~"/api/(a|b)/.*"}[5m]))) > 0.1 or max by (group) (y) > 5 and on (job) '
        'up{job=~"a|b"} == bool 0') == [
            'x_bucket{job="ingest", route=~"/api/(a|b)/.*"}', "y", 'up{job=~"a|b"}']
    assert selectors('{__name__="z"} offset 5m') == ['{__name__="z"}']
    assert alternatives('up{job=~"a|b", x=~"c|d", s=~"5.."}') == [
        'up{job="a", x="c", s=~"5.."}', 'up{job="a", x="d", s=~"5.."}',
        'up{job="b", x="c", s=~"5.."}', 'up{job="b", x="d", s=~"5.."}']
    # Every shipped expression names at least one series.
    for name, expression in {**alert_expressions(), **dashboard_queries()}.items():
        assert selectors(expression), name


# --- Prometheus ------------------------------------------------------------------------------


class Prometheus:
    """A client of one Prometheus server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10)

    def api(self, path: str, **params: str) -> Any:
        body = self.client.get("/api/v1/" + path, params=params).json()
        if body["status"] != "success":
            raise AssertionError(f"{path} {params}: {body.get('error')}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expression)["result"]
        return result

    def problems(self, expression: str) -> list[str]:
        """Why ``expression`` is broken against what was scraped: it does not parse
        or evaluate, or a selector in it matches no series. Empty when it is fine."""
        response = self.client.get("/api/v1/query", params={"query": expression}).json()
        if response["status"] != "success":
            return [f"does not evaluate: {response.get('error')}"]
        return [f"no series match {selector}" for named in selectors(expression)
                for selector in alternatives(named) if not self.client.get("/api/v1/series",
                                       params={"match[]": selector}).json()["data"]]

    def close(self) -> None:
        self.client.close()


def scrape_config(targets: dict[str, list[str]]) -> dict[str, Any]:
    """ops/prometheus.yml with each job's targets replaced by ``targets[job]``, 1 s
    scrape and evaluation intervals, and ops/alerts.yml as its rules."""
    config: dict[str, Any] = yaml.safe_load((OPS / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s",
                        "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(OPS / "alerts.yml")]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets), f"ops/prometheus.yml scrapes {jobs}"
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


@contextmanager
def prometheus_server(config: dict[str, Any], folder: Path) -> Iterator[Prometheus]:
    """Debian's ``prometheus`` on a free port, its data and log in ``folder``."""
    assert Path(PROMETHEUS).exists(), "prometheus is missing: `make test` installs it"
    folder.mkdir()
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (folder / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    client = Prometheus(f"http://127.0.0.1:{port}")
    try:
        def ready() -> bool:
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
            try:
                return client.client.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "prometheus ready")
        yield client
    finally:
        client.close()
        stop_process(process)


def host_port(url: str) -> str:
    return url.removeprefix("http://").split("/", 1)[0]


# --- the test --------------------------------------------------------------------------------


def test_alerts_and_dashboard_evaluate_against_scraped_series(backing: Backing,
                                                             tmp_path: Path) -> None:
    overrides = {"WS_MAX_PER_IP": "1", "TOKEN_FAILURES_TO_LIMIT_ADDRESS": "1"}
    # Redis is gone for this one (nothing listens on the port): /readyz answers 503.
    redisless = backing.env(**overrides, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with system(backing, tmp_path, **overrides) as urls, \
            ingest_server(redisless, ready_path="/healthz") as broken_ingest:
        assert httpx.get(broken_ingest + "/readyz", timeout=10).status_code == 503
        keys = backing.keys_for(urls["key_prefix"])
        client: Any = backing.sync_redis(decode_responses=True)
        api = Api(urls["ingest"])
        ws_url = urls["broadcaster"].replace("http", "ws") + "/ws?board=global"
        try:
            with ws_connect(ws_url, open_timeout=10) as spectator:
                spectator.recv(timeout=10)
                try:  # the same address again: refused by WS_MAX_PER_IP=1
                    ws_connect(ws_url, open_timeout=10).close()
                    raise AssertionError("a second spectator from one address was admitted")
                except websockets.exceptions.InvalidStatus as refused:
                    assert refused.response.status_code == 429
                increments(api, api.register_and_login(), 2)
                client.xadd(keys.shard(0).stream, {"event_id": fresh_name("broken"),
                                          "request_id": "prometheus-test"})
                forged = api.post("/api/actions/token", headers={
                    "Authorization": "Bearer a.b.c", "X-Forwarded-For": new_address()})
                assert forged.status_code == 401
                wait_for(lambda: client.xlen(keys.shard(0).dead_letters) == 1
                         and value(scrape(urls["worker_metrics"]),
                                   "scoreboard_worker_persisted_total") >= 2,
                         "the worker persisted the increments and dead-lettered the entry")

            config = scrape_config({
                "ingest": [host_port(urls["ingest"]), host_port(broken_ingest)],
                "worker": [host_port(urls["worker_metrics"])],
                "broadcaster": [host_port(urls["broadcaster"])]})
            with prometheus_server(config, tmp_path / "prometheus") as prometheus:
                check_against(prometheus)
        finally:
            api.close()
            client.delete(keys.shard(0).stream, keys.shard(0).dead_letters)
            client.close()


def check_against(prometheus: Prometheus) -> None:
    # Every target scraped at least twice (rate() needs two samples), the rules loaded.
    wait_for(lambda: len(prometheus.query("count_over_time(up[1m]) >= 2")) == 4
             and len(prometheus.query("up == 1")) == 4, "four targets up, scraped twice")
    alerts = alert_expressions()

    def rules_evaluated() -> bool:
        rules = [rule for group in prometheus.api("rules")["groups"]
                 for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == set(alerts)
        return all(rule["health"] == "ok" for rule in rules)

    wait_for(rules_evaluated, "every alert rule evaluated without error")

    problems = {name: found for name, expression in {**alerts, **dashboard_queries()}.items()
                if (found := prometheus.problems(expression))}
    assert problems == {}

    # The check can fail: a renamed series, a renamed label value, a broken expression.
    lag = alerts["ScoreboardConsumerLag"]
    assert prometheus.problems(lag.replace("scoreboard_stream_lag_seconds",
                                           "scoreboard_stream_lag_secs")) == [
        "no series match scoreboard_stream_lag_secs"]
    assert prometheus.problems('up{job=~"ingest|workers"}') == [
        'no series match up{job="workers"}']
    assert prometheus.problems("sum(rate(up[1m])")[0].startswith("does not evaluate")

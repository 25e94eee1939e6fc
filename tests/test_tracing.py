"""Traces across real processes: ingest and a worker export over OTLP/HTTP (the
SDK's own exporter, configured only by OTEL_* variables) to a receiver in this test,
which decodes the protobuf requests. One increment must give one connected trace:
ingest's request span, its script span as a child, the entry carrying the script
span's context, the worker's batch span linked to it, and the broadcaster's
snapshot span linked to the worker's apply_batch.lua span. Off (the default), the
entry carries no trace context."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from websockets.sync.client import connect

from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.stream_entry import unpacked
from scoreboard.tracing import parse_traceparent, tracing_enabled
from tests.conftest import Api, Player
from tests.ops_support import increments
from tests.servers import Backing, broadcaster_server, fresh_name, ingest_server, stream_entries
from tests.waiting import wait_for
from tests.worker_support import worker_process

Span = dict[str, Any]


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[Span]]]:
    """An OTLP/HTTP trace receiver on a free port; yields its endpoint and the spans
    received so far (service, name, kind, ids in hex, parent, links)."""
    spans: list[Span] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                service = next(a.value.string_value for a in resource.resource.attributes
                               if a.key == "service.name")
                for scope in resource.scope_spans:
                    spans.extend({
                        "service": service, "name": s.name, "kind": s.kind,
                        "trace": s.trace_id.hex(), "span": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(),
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    } for s in scope.spans)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", spans
    finally:
        server.shutdown()
        server.server_close()


def test_tracing_is_off_unless_the_standard_variables_turn_it_on() -> None:
    assert not tracing_enabled({})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert parse_traceparent("00-" + "ab" * 16 + "-" + "cd" * 8 + "-01") == (
        int("ab" * 16, 16), int("cd" * 8, 16), 1)
    for bad in ("", "00-" + "0" * 32 + "-" + "cd" * 8 + "-01", "01-xyz", "00-ab-cd-01"):
        assert parse_traceparent(bad) is None


def test_off_by_default_the_entry_carries_no_trace_context(
        api: Api, player: Player, redis_client: Any, keys: Keys) -> None:
    response, = increments(api, player, 1)
    event_id = response.json()["event_id"]
    entry = next(fields for fields in (unpacked(f) for _, f in redis_client.xrevrange(
        keys.player(player.user_id).stream, count=200)) if fields["event_id"] == event_id)
    assert "traceparent" not in entry


def test_one_increment_is_one_connected_trace_from_ingest_to_the_snapshot(
        backing: Backing, backend: Player) -> None:
    with otlp_receiver() as (endpoint, spans):
        env = backing.env(KEY_PREFIX=fresh_name("sbtrace"), TRUSTED_PROXIES="127.0.0.1/32",
                          WORKER_METRICS_PORT="0", OTEL_TRACES_EXPORTER="otlp",
                          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint,
                          OTEL_BSP_SCHEDULE_DELAY="100")
        keys = backing.keys_for(env["KEY_PREFIX"])
        client: Any = backing.sync_redis(decode_responses=True)
        try:
            with (ingest_server(env) as url, worker_process(env),
                  broadcaster_server(env) as spectators,
                  connect(spectators.replace("http://", "ws://") + "/ws?board=global") as ws):
                assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
                api = Api(url)
                try:
                    response, = increments(api, api.register_and_login(), 1)
                    batch = api.post("/api/scores/batch", headers=backend.headers, json={
                        "increments": [{"user_id": fresh_name("gp"), "points": 5,
                                        "board": "global", "event_id": fresh_name("ev")}]})
                    assert batch.status_code == 202, batch.text
                finally:
                    api.close()
                # the player's entry and the backend's (a batch item); on a cluster
                # each is in its player's shard stream, listed in shard order, not in
                # the order they were written
                entry, = [e for _, e in stream_entries(client, keys) if e["source"] == "player"]
                batch_entry, = [e for _, e in stream_entries(client, keys)
                                if e["source"] != "player"]

                def linked() -> list[tuple[str, str]]:
                    return [link for s in spans if s["service"] == "worker"
                            and s["name"] == "persist batch" for link in s["links"]]

                wait_for(lambda: len(linked()) == 2, "the worker's batch spans exported")

                def shown() -> set[tuple[str, str]]:
                    return {link for s in spans if s["service"] == "broadcaster"
                            and s["name"] == "snapshot" for link in s["links"]}

                def applied() -> set[tuple[str, str]]:
                    return {(s["trace"], s["span"]) for s in spans
                            if s["service"] == "worker" and s["name"] == "apply_batch.lua"}

                wait_for(lambda: applied() and applied() <= shown(),
                         "snapshot spans linked to every batch the worker applied")
        finally:
            for stream in keys.streams:
                client.delete(stream)
            client.close()

    assert entry["event_id"] == response.json()["event_id"]
    request, = [s for s in spans if s["service"] == "ingest"
                and s["name"] == "POST /api/scores/increment"]
    script, = [s for s in spans if s["service"] == "ingest" and s["name"] == "increment.lua"]
    assert script["trace"] == request["trace"] and script["parent"] == request["span"]
    # The entry carries the script span's context; the batch span links to it.
    trace_id, span_id, flags = parse_traceparent(entry["traceparent"]) or (0, 0, 0)
    assert (f"{trace_id:032x}", f"{span_id:016x}") == (script["trace"], script["span"])
    assert flags & 1  # sampled
    # The backend's batch: its own request and script spans, the same shape.
    batch_request, = [s for s in spans if s["name"] == "POST /api/scores/batch"]
    batch_script, = [s for s in spans if s["name"] == "batch.lua"]
    assert batch_script["parent"] == batch_request["span"]
    assert batch_entry["traceparent"].split("-")[1:3] == [batch_script["trace"],
                                                           batch_script["span"]]
    assert sorted(linked()) == sorted([(script["trace"], script["span"]),
                                       (batch_script["trace"], batch_script["span"])])
    # Each batch's apply_batch.lua and fraud-check spans are children of its batch
    # span, and a snapshot span links to the apply: increment -> batch -> snapshot.
    worker = {s["span"]: s for s in spans if s["service"] == "worker"}
    for persisted in (s for s in worker.values() if s["name"] == "persist batch"):
        children = {s["name"] for s in worker.values() if s["parent"] == persisted["span"]}
        assert {"apply_batch.lua", "fraud checks"} <= children, children
    assert shown() >= applied()

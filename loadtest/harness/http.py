"""The raw HTTP/1.1 client of the load generators, and the Prometheus scrape.

Why not httpx on the hot path (see ``loadtest/load_generator.py``): measured on
the 2-core machine the benchmarks were written on, httpx cost 1.3 ms of CPU per
request with a connection each; this client keeps one keep-alive connection,
writes pre-encoded request bytes and parses the answer with httptools (the
parser uvicorn itself uses), about 30 to 70 µs per request.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

import httptools
import httpx
from prometheus_client.parser import text_string_to_metric_families

INCREMENT_PATH = "/api/scores/increment"


def encode_post(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One complete HTTP/1.1 POST with a JSON body, ready to write."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}",
             *(f"{name}: {value}" for name, value in headers.items()),
             "Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time.

    Open with ``loop.create_connection(HttpConnection, host, port)``, then
    ``await post(request_bytes)`` for ``(status, body)``. A connection the
    server closed, or an unparsable answer, fails the pending call with an
    ``OSError`` and leaves ``closed`` true: the caller opens a new one.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"unparsable HTTP answer: {exc}"))

    def on_body(self, chunk: bytes) -> None:  # httptools callback
        self._body.append(chunk)

    def on_message_complete(self) -> None:  # httptools callback
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), b"".join(self._body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: OSError) -> None:
        self.close()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.closed or self._transport is None:
            raise ConnectionResetError("the connection is closed")
        self._body = []
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer


async def open_connection(url: str) -> HttpConnection:
    """A new connection to the ``http://host:port`` of ``url``."""
    parts = urlsplit(url)
    _, connection = await asyncio.get_running_loop().create_connection(
        HttpConnection, parts.hostname or "127.0.0.1", parts.port or 80)
    return connection


# --- Prometheus ---------------------------------------------------------------------------


MetricSample = tuple[str, dict[str, str], float]  # (name, labels, value)


def parse_metrics(text: str) -> list[MetricSample]:
    """Every sample of a Prometheus text exposition."""
    return [(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(url: str, timeout_s: float = 30) -> list[MetricSample]:
    """GET ``url`` (a /metrics endpoint) and parse it."""
    return parse_metrics(httpx.get(url, timeout=timeout_s).text)


async def scrape_async(url: str, timeout_s: float = 2) -> list[MetricSample] | None:
    """:func:`scrape` without blocking the event loop; None when it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            text = (await http.get(url)).text
    except httpx.HTTPError:
        return None
    return parse_metrics(text)


def histogram_buckets(samples: list[MetricSample], name: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of histogram ``name`` (summed over its other labels)."""
    buckets: dict[float, float] = {}
    for sample_name, labels, value in samples:
        if sample_name == name + "_bucket":
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    return sorted(buckets.items())

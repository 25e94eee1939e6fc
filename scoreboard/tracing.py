"""Traces across the pipeline (OpenTelemetry), off unless configured.

On when the standard variables ask for it: ``OTEL_TRACES_EXPORTER=otlp``, or an
OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``);
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it off. The SDK
and its OTLP/HTTP exporter read every other ``OTEL_*`` variable themselves
(endpoint, headers, ``OTEL_SERVICE_NAME``, sampler, batch delays).

Off, nothing of OpenTelemetry is imported and every hook here is a ``None`` check:
the hot path pays nothing. On, the trace context of the request's script span
travels in the stream entry as a W3C ``traceparent``, and the worker's batch span
links to the traces of its entries (one batch serves many requests: links, not
parents). The worker's board-change notice carries the context of its
``apply_batch.lua`` span, and the broadcaster's snapshot span links to the
batches noticed since its last read: increment -> batch -> snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def tracing_enabled(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter == "otlp"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


@dataclass(frozen=True)
class Tracing:
    """A process's tracer and the provider that exports its spans."""

    tracer: Any  # opentelemetry.trace.Tracer
    provider: Any  # opentelemetry.sdk.trace.TracerProvider

    def shutdown(self) -> None:
        """Export what is buffered (a process stopping must not lose its last spans)."""
        self.provider.shutdown()


def setup_tracing(service_name: str, env: Mapping[str, str]) -> Tracing | None:
    """The process's tracing, or None when it is off (the default)."""
    if not tracing_enabled(env):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(tracer=provider.get_tracer("scoreboard"), provider=provider)


def traceparent_of(span: Any) -> str:
    """The W3C ``traceparent`` of ``span`` ('' for one that is not recorded)."""
    context = span.get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse_traceparent(text: str) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of a W3C ``traceparent``; None if it is not one."""
    found = _TRACEPARENT.fullmatch(text.strip().lower())
    if found is None or set(found[1]) == {"0"} or set(found[2]) == {"0"}:
        return None
    return int(found[1], 16), int(found[2], 16), int(found[3], 16)


def links_to(traceparents: Sequence[str]) -> list[Any]:
    """Span links to each distinct valid ``traceparent`` (entries written with
    tracing off carry none)."""
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    links, seen = [], set()
    for text in traceparents:
        parsed = parse_traceparent(text)
        if parsed is None or parsed in seen:
            continue
        seen.add(parsed)
        trace_id, span_id, flags = parsed
        links.append(Link(SpanContext(trace_id, span_id, is_remote=True,
                                      trace_flags=TraceFlags(flags))))
    return links


# Off, every client span is this one reusable context: no generator per call.
_OFF: AbstractContextManager[str] = nullcontext("")


def client_span(tracing: Tracing | None, name: str,
                **attributes: Any) -> AbstractContextManager[str]:
    """A CLIENT span around a call to Redis; ``with`` gives its ``traceparent`` ('' off)."""
    return _OFF if tracing is None else _recorded_span(tracing, name, attributes, client=True)


def inner_span(tracing: Tracing | None, name: str, links: Sequence[str] = (),
               **attributes: Any) -> AbstractContextManager[str]:
    """An INTERNAL span (work of this process), linked to each of ``links``
    (traceparents); ``with`` gives its ``traceparent`` ('' off)."""
    if tracing is None:
        return _OFF
    return _recorded_span(tracing, name, attributes, client=False, links=links)


@contextmanager
def _recorded_span(tracing: Tracing, name: str, attributes: dict[str, Any], *,
                   client: bool, links: Sequence[str] = ()) -> Iterator[str]:
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    with tracing.tracer.start_as_current_span(name, kind=kind, attributes=attributes,
                                              links=links_to(links)) as span:
        yield traceparent_of(span)


@contextmanager
def server_span(tracing: Tracing, scope: Mapping[str, Any]) -> Iterator[Any]:
    """A SERVER span for one HTTP request (an ASGI ``scope``), child of the caller's
    ``traceparent`` header when it sends a valid one; yields the span."""
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        TraceFlags,
        set_span_in_context,
    )

    parent = None
    for name, value in scope.get("headers", []):
        if name == b"traceparent":
            parsed = parse_traceparent(value.decode("latin-1"))
            if parsed is not None:
                trace_id, span_id, flags = parsed
                parent = set_span_in_context(NonRecordingSpan(SpanContext(
                    trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))))
            break
    with tracing.tracer.start_as_current_span(
            f"{scope['method']} {scope['path']}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"]}) as span:
        yield span

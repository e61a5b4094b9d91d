"""OpenTelemetry tracing: the tracer provider, and W3C trace context in Kafka headers and gRPC metadata.

`configure(settings)` installs the SDK tracer provider once per process (`billing serve`
and `Service.start` call it). Spans are always made, so every log line written inside one
carries a trace id and span id (billing/ops/logging.py); they leave the process only when
an exporter is configured:

- `BILLING_OTLP_ENDPOINT` (e.g. `http://otel-collector:4317`): OTLP over gRPC to there;
- otherwise the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
  (with the other standard `OTEL_EXPORTER_OTLP_*` variables: headers, certificates, ...);
- neither: no exporter (the default).

`BILLING_TRACING_ENABLED=false` (or the standard `OTEL_SDK_DISABLED=true`) installs nothing:
spans are then non-recording and cost next to nothing. `BILLING_TRACE_SAMPLE_RATIO` samples
new traces (parent-based: a trace that arrives sampled stays sampled).

Context travels as W3C TraceContext (`traceparent`, `tracestate`) through the global
propagator of `opentelemetry.propagate` (never parsed by hand): in gRPC metadata (in),
in Kafka headers (in, on every consumed topic; out, on every message the outbox relay
publishes), and in the outbox row's headers between the transaction that wrote the row and
the relay that publishes it. Where the spans are, and how a consumer batch relates to the
traces of its messages, is written down in docs/operations.md.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind

# Defined below the store (which writes trace headers into outbox rows); used from here by the rest.
from billing.telemetry import TRACE_HEADERS, inject, tracer  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from billing.config import Settings

log = logging.getLogger(__name__)

# Spans per consumer batch that continue the traces of individual messages, and links
# from the batch span to them: bounded, so a 20,000-message batch never makes 20,000 spans.
MAX_MESSAGE_SPANS = 100
MAX_LINKS = 100

_provider = None


def configure(settings: "Settings"):
    """Install the tracer provider (once; later calls return the same one). Returns the SDK
    provider, or None when tracing is disabled. Tests add their own span processor to it."""
    global _provider
    if _provider is not None:
        return _provider
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # installed already (by an embedding program)
        _provider = current
        return _provider
    if not settings.tracing_enabled or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": settings.otel_service_name, "service.namespace": "billing"})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    endpoint = otlp_endpoint(settings)
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if settings.otlp_endpoint:
            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint,
                                        insecure=settings.otlp_endpoint.startswith("http://"))
        else:  # the standard variables, read by the exporter itself
            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing configured", extra={"otlp_endpoint": endpoint or None,
                                          "sample_ratio": settings.trace_sample_ratio})
    return provider


def otlp_endpoint(settings: "Settings") -> str | None:
    return (settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)


def shutdown() -> None:
    """Flush spans still queued for export (at process exit)."""
    if _provider is not None:
        _provider.force_flush(5000)


# ------------------------------------------------------------------ context in carriers

def extract(carrier: Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]] | None) -> Context | None:
    """The remote context in Kafka headers or gRPC metadata, or None when they carry no valid
    traceparent. Accepts a dict or (key, value) pairs; bytes values are decoded."""
    if not carrier:
        return None
    items = carrier.items() if isinstance(carrier, Mapping) else carrier
    found: dict[str, str] = {}
    for key, value in items:
        if value is None:
            continue
        key = key.lower()
        if key in TRACE_HEADERS or key == "baggage":
            found[key] = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    if "traceparent" not in found:
        return None
    ctx = propagate.extract(found)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def kafka_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """The current (or given) context as Kafka headers, for a producer."""
    return [(k, v.encode()) for k, v in inject({}, context).items()]


def link_to(span: Span | Context | None) -> Link | None:
    if isinstance(span, Context) or span is None:
        span = trace.get_current_span(span)
    sc = span.get_span_context()
    return Link(sc) if sc.is_valid else None


def message_links(headers_of: Iterable[Mapping[str, bytes]], limit: int = MAX_LINKS) -> list[Link]:
    """Links to the producer contexts of the first `limit` messages that carry one."""
    links: list[Link] = []
    for headers in headers_of:
        if "traceparent" not in headers:
            continue
        ctx = extract(headers)
        if ctx is not None:
            links.append(Link(trace.get_current_span(ctx).get_span_context()))
            if len(links) >= limit:
                break
    return links


def start_message_span(name: str, headers: Mapping[str, bytes], *, attributes: Mapping | None = None) -> Span:
    """A consumer span for one message: a child of the producer's context when the message
    carries one (linked to the current batch span), else a child of the current span."""
    ctx = extract(headers) if "traceparent" in headers else None
    links = None
    if ctx is not None:
        link = link_to(None)
        links = [link] if link else None
    return tracer.start_span(name, context=ctx, kind=SpanKind.CONSUMER, links=links, attributes=attributes)


def record_error(span: Span, exc: BaseException | str) -> None:
    from opentelemetry.trace import Status, StatusCode

    if isinstance(exc, BaseException):
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
    else:
        span.set_status(Status(StatusCode.ERROR, exc[:200]))


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, or None outside a valid one."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")

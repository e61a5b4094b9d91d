"""OpenTelemetry tracing: the tracer provider, and W3C trace context in Kafka headers and gRPC metadata.

`configure(settings)` installs the SDK tracer provider once per process (`billing serve`
and `Service.start` call it). Spans are always made, so every log line written inside one
carries a trace id and span id (billing/ops/logging.py); they leave the process only when
an exporter endpoint is configured. The standard OTEL_* variables are honoured; a BILLING_*
setting given explicitly wins over its OTEL_* counterpart (`resolve` below; docs/operations.md):

- service name: BILLING_OTEL_SERVICE_NAME > OTEL_SERVICE_NAME > `service.name` in
  OTEL_RESOURCE_ATTRIBUTES > "billing-service"; the other OTEL_RESOURCE_ATTRIBUTES are kept;
- sampler: BILLING_TRACE_SAMPLE_RATIO (parent-based ratio) > OTEL_TRACES_SAMPLER(_ARG) >
  parentbased_always_on;
- endpoint: BILLING_OTLP_ENDPOINT > OTEL_EXPORTER_OTLP_TRACES_ENDPOINT > OTEL_EXPORTER_OTLP_ENDPOINT;
  none: no exporter (the default);
- protocol: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL > OTEL_EXPORTER_OTLP_PROTOCOL > `grpc` (the
  SDK's own default, and what port 4317 of the compose file speaks); `http/protobuf` exports
  to <endpoint>/v1/traces. The other OTEL_EXPORTER_OTLP_* (headers, certificates, timeout)
  are read by the exporter itself.

`BILLING_TRACING_ENABLED=false` (or the standard `OTEL_SDK_DISABLED=true`) installs nothing:
spans are then non-recording and cost next to nothing.

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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TracingConfig:
    service_name: str
    sample_ratio: float | None  # None: the SDK's sampler from OTEL_TRACES_SAMPLER (or its default)
    endpoint: str | None
    protocol: str  # "grpc" or "http/protobuf"
    endpoint_from_billing: bool  # BILLING_OTLP_ENDPOINT; else the exporter reads the OTEL_* variables itself


PROTOCOLS = ("grpc", "http/protobuf")


def resolve(settings: "Settings", environ: Mapping[str, str] | None = None) -> TracingConfig:
    """Which of BILLING_* and OTEL_* apply: an explicitly set BILLING_* setting wins (explicit:
    in the environment, the stack's env file or a keyword; not a default)."""
    env = os.environ if environ is None else environ
    given = settings.model_fields_set
    resource_attrs = dict(kv.split("=", 1) for kv in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",") if "=" in kv)
    if "otel_service_name" in given:
        service = settings.otel_service_name
    else:
        service = (env.get("OTEL_SERVICE_NAME") or resource_attrs.get("service.name", "").strip()
                   or settings.otel_service_name)
    ratio = settings.trace_sample_ratio if "trace_sample_ratio" in given or not env.get("OTEL_TRACES_SAMPLER") else None
    endpoint = (settings.otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)
    protocol_var = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    else "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = env.get(protocol_var, "").strip() or "grpc"
    if protocol not in PROTOCOLS:
        raise ValueError(f"{protocol_var}={protocol!r} is not supported: use one of {', '.join(PROTOCOLS)}")
    return TracingConfig(service, ratio, endpoint, protocol, bool(settings.otlp_endpoint))


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

    cfg = resolve(settings)
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the attributes given here win over them.
    attributes = {"service.name": cfg.service_name}
    if "service.namespace=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.namespace"] = "billing"
    sampler = ParentBased(TraceIdRatioBased(cfg.sample_ratio)) if cfg.sample_ratio is not None else None
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if cfg.endpoint:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(_exporter(cfg)))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing configured", extra={"otlp_endpoint": cfg.endpoint, "otlp_protocol": cfg.protocol,
                                          "service_name": cfg.service_name, "sample_ratio": cfg.sample_ratio})
    return provider


def _exporter(cfg: TracingConfig):
    """Without BILLING_OTLP_ENDPOINT the exporter reads the standard variables itself (the
    HTTP one appends /v1/traces to OTEL_EXPORTER_OTLP_ENDPOINT, as the spec says)."""
    endpoint = cfg.endpoint or ""
    if cfg.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        # BILLING_OTLP_ENDPOINT is a base URL too, like OTEL_EXPORTER_OTLP_ENDPOINT.
        return HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces") if cfg.endpoint_from_billing else HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    if cfg.endpoint_from_billing:
        return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    return OTLPSpanExporter()


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

"""What a unit of work carries for its logs and traces: its tenant and its trace context.

The lowest layer of the service: the store sets and writes these (a transaction's tenant,
an outbox row's trace headers), billing/ops formats and exports them, and neither of the
two packages imports the other for it.
"""
from __future__ import annotations

import contextvars

from opentelemetry import propagate, trace
from opentelemetry.context import Context

__all__ = ["TRACE_HEADERS", "current_tenant", "direct_tracer", "inject", "tracer"]

# Set by the gRPC auth interceptor, the consumers and each tenant transaction for the
# duration of one unit of work; every log line written meanwhile names the tenant.
current_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_tenant", default=None)

# A proxy until billing.ops.tracing.configure() installs the provider; module-level use is safe.
tracer = trace.get_tracer("billing")

TRACE_HEADERS = ("traceparent", "tracestate")

_direct: trace.Tracer | None = None


def direct_tracer() -> trace.Tracer:
    """The installed provider's own tracer (the same scope, "billing"), for the spans every
    call makes: `tracer` is a ProxyTracer, which looks its delegate up on every span. Until a
    provider is installed, `tracer` itself; a provider, once installed, is never replaced."""
    global _direct
    if _direct is None:
        found = trace.get_tracer("billing")
        if isinstance(found, trace.ProxyTracer):
            return tracer
        _direct = found
    return _direct


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Write the current (or given) span's context into `headers` (str values), replacing
    trace headers already there; nothing is written outside a valid span."""
    span = trace.get_current_span(context)
    for key in TRACE_HEADERS:
        headers.pop(key, None)
    if span.get_span_context().is_valid:
        propagate.inject(headers, context=context)
    return headers

"""Server interceptors: tracing, metrics and authentication (API key -> tenant).

Each wraps the method handler rather than the call, so the tenant context variable and the
current span are set in the same task that runs the handler (the pattern of the grpc.aio
examples). The API key is never logged nor put on a span: only the tenant it resolves to,
and in the audit trail the key's id (`api:<api_key_id>`).
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Awaitable, Callable, Iterable

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from billing.api import status
from billing.api.unavailable import UNAVAILABLE_ERRORS, UNAVAILABLE_MESSAGE
from billing.ops import tracing
from billing.ops.logging import current_tenant
from billing.ops.metrics import GRPC_LATENCY, GRPC_REQUESTS
from billing.services.api_keys import KeyCache
from billing.services.context import Caller
from billing.services.tenants import KeyIdentity
from billing.services.uow import reset_entry_keys, set_entry_keys

log = logging.getLogger(__name__)

current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)

# Health checks and reflection are open: they reveal nothing about any tenant.
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _wrap_unary(handler: grpc.RpcMethodHandler, around: Callable) -> grpc.RpcMethodHandler:
    if handler is None or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        around(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _gave_up(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status of a call whose handler was cancelled: the client cancelled it, or its
    deadline passed (the time left is then 0)."""
    left = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= 0.001 else grpc.StatusCode.CANCELLED


def _bearer(metadata: tuple) -> str | None:
    """The key of `authorization: Bearer <key>`; the scheme is case-insensitive (RFC 9110)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """API key -> tenant through `keys` (services/api_keys.py: cached while the process
    hears of every revocation); the key is checked live again by each transaction the call
    opens, so a call refused there forgets the key here too."""

    def __init__(self, keys: KeyCache):
        self._keys = keys

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if details.method.startswith(PUBLIC_PREFIXES):
            return handler
        key = _bearer(details.invocation_metadata)
        method = details.method.rsplit("/", 1)[-1]

        def around(behavior: Callable[..., Awaitable]):
            async def call(request, context: grpc.aio.ServicerContext):
                if not key:
                    log.info("unauthenticated call refused", extra={"method": method, "reason": "no API key"})
                    await status.abort(context, grpc.StatusCode.UNAUTHENTICATED,
                                       "missing API key: send metadata 'authorization: Bearer <key>'",
                                       reason="API_KEY_MISSING")
                try:
                    identity: KeyIdentity | None = await self._keys.identify(key)
                except UNAVAILABLE_ERRORS as exc:  # not UNKNOWN: the client should retry
                    log.warning("database unavailable for authentication: %s: %s", type(exc).__name__, exc)
                    await status.abort(context, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE,
                                       reason="DATABASE_UNAVAILABLE")
                if identity is None:
                    # Never the key itself, not even its prefix: a mistyped key is nearly a real one.
                    log.info("unauthenticated call refused", extra={"method": method,
                                                                    "reason": "unknown or revoked API key"})
                    await status.abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key",
                                       reason="API_KEY_INVALID")
                tenant_id = identity.tenant_id
                trace.get_current_span().set_attribute("billing.tenant_id", str(tenant_id))
                caller_token = current_caller.set(Caller(tenant_id, identity.actor, api_key_hash=identity.key_hash))
                tenant_token = current_tenant.set(str(tenant_id))
                keys_token = set_entry_keys((identity.key_hash,) if identity.key_hash else ())
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    if context.code() == grpc.StatusCode.UNAUTHENTICATED:  # revoked meanwhile
                        self._keys.forget(identity.key_hash)
                    raise
                finally:
                    reset_entry_keys(keys_token)
                    current_tenant.reset(tenant_token)
                    current_caller.reset(caller_token)
            return call

        return _wrap_unary(handler, around)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by its outcome, those the client gave up on included: a call
    cancelled by the client or past its deadline has its task cancelled (CancelledError, no
    status code on the context), so it is told apart here by the time left.

    `methods`: the service's method names; their server-fault series (SERVER_FAULT_CODES)
    exist at 0 from the start, so error-rate alerts see the first one."""

    SERVER_FAULT_CODES = ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED")

    def __init__(self, methods: Iterable[str] = ()):
        for method in methods:
            for code in self.SERVER_FAULT_CODES:
                GRPC_REQUESTS.labels(method, code)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1] if handler is not None else "unknown"

        def around(behavior: Callable[..., Awaitable]):
            async def call(request, context: grpc.aio.ServicerContext):
                start = time.perf_counter()
                code = "OK"
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    code = context.code().name if context.code() else "UNKNOWN"
                    raise
                except asyncio.CancelledError:
                    code = _gave_up(context).name
                    raise
                except Exception:
                    code = "INTERNAL"
                    raise
                finally:
                    if code == "OK" and context.code() not in (None, grpc.StatusCode.OK):
                        code = context.code().name
                    GRPC_REQUESTS.labels(method, code).inc()
                    GRPC_LATENCY.labels(method).observe(time.perf_counter() - start)
            return call

        return _wrap_unary(handler, around)


# Not traced: health probes (every few seconds, from every orchestrator) and reflection.
UNTRACED_PREFIXES = PUBLIC_PREFIXES


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per call, continuing the caller's trace from the `traceparent` (and
    `tracestate`) metadata when there is one."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if details.method.startswith(UNTRACED_PREFIXES):
            return handler
        full = details.method.lstrip("/")
        service, _, method = full.rpartition("/")
        parent = tracing.extract(details.invocation_metadata)

        def around(behavior: Callable[..., Awaitable]):
            async def call(request, context: grpc.aio.ServicerContext):
                with tracing.tracer.start_as_current_span(
                    full, context=parent, kind=SpanKind.SERVER, record_exception=False, set_status_on_exception=False,
                    attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
                ) as span:
                    gave_up = None
                    try:
                        return await behavior(request, context)
                    except grpc.aio.AbortError:
                        raise
                    except asyncio.CancelledError:
                        gave_up = _gave_up(context)
                        raise
                    except Exception as exc:  # becomes UNKNOWN for the client
                        span.record_exception(exc)
                        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                        raise
                    finally:
                        code = gave_up or context.code() or grpc.StatusCode.OK
                        span.set_attribute("rpc.grpc.status_code", code.value[0])
                        if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS,
                                    grpc.StatusCode.UNIMPLEMENTED):
                            span.set_status(Status(StatusCode.ERROR, code.name))
            return call

        return _wrap_unary(handler, around)

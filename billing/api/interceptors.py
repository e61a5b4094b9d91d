"""The server's one interceptor: metrics, the bound on concurrent calls, tracing,
authentication (API key -> tenant) and malformed requests, in that order (outermost first).

One interceptor rather than one per concern, and the wrapped handler built once per method
and kept: grpc.aio runs each interceptor's `intercept_service` as a coroutine of its own on
every call, so a chain of five cost five coroutines, five new handlers and their closures per
call before the method ran. What a call needs of its own (the API key, the trace parent) is
read from its context's metadata; the method's name, span attributes and metric children
are resolved once.

The wrapper runs in the task that runs the handler, so the tenant context variable and the
current span are set where the handler sees them. The API key is never logged nor put on a
span: only the tenant it resolves to, and in the audit trail the key's id (`api:<api_key_id>`).
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any, Awaitable, Callable

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from billing.api import status
from billing.api.malformed import MalformedRequest, lenient
from billing.api.overload import EXEMPT_PREFIXES, OVERLOAD_MESSAGE, CallLimit
from billing import telemetry
from billing.api.unavailable import UNAVAILABLE_ERRORS, UNAVAILABLE_MESSAGE
from billing.ops import tracing
from billing.ops.logging import current_tenant
from billing.ops.metrics import GRPC_IN_FLIGHT, GRPC_LATENCY, GRPC_REQUESTS
from billing.services.api_keys import KeyCache
from billing.services.context import Caller
from billing.services.tenants import KeyIdentity
from billing.services.uow import reset_entry_keys, set_entry_keys

log = logging.getLogger(__name__)

current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)

# Health checks and reflection are open (they reveal nothing about any tenant) and not
# traced (health probes come every few seconds from every orchestrator).
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
UNTRACED_PREFIXES = PUBLIC_PREFIXES

# Server-fault series that exist at 0 from the start, so error-rate alerts see the first one.
SERVER_FAULT_CODES = ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED")
# Statuses that mark the server span as an error.
_SPAN_ERRORS = frozenset((grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                          grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS,
                          grpc.StatusCode.UNIMPLEMENTED))

Behavior = Callable[..., Awaitable]


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


class _MethodMetrics:
    """The metric children of one method, resolved once (`labels()` is a locked dict lookup)."""

    __slots__ = ("method", "latency", "requests")

    def __init__(self, method: str):
        self.method = method
        self.latency = GRPC_LATENCY.labels(method)
        self.requests: dict[str, Any] = {}

    def count(self, code: str) -> None:
        child = self.requests.get(code)
        if child is None:
            child = self.requests[code] = GRPC_REQUESTS.labels(self.method, code)
        child.inc()


class CallInterceptor(grpc.aio.ServerInterceptor):
    """`methods`: the service's method names (their server-fault series are made at 0);
    `keys`: API key -> tenant (services/api_keys.py: cached while the process hears of every
    revocation); the key is checked live again by the database statement each call runs,
    so a call refused there forgets the key here too. `limit`: the bound (billing/api/overload.py)."""

    def __init__(self, keys: KeyCache, limit: CallLimit, methods: tuple[str, ...] = ()):
        self._keys = keys
        self.limit = limit
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in methods:
            for code in SERVER_FAULT_CODES:
                GRPC_REQUESTS.labels(method, code)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        wrapped = self._handlers.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED; nothing kept for it
            return None
        wrapped = self._wrap(details.method, handler)
        self._handlers[details.method] = wrapped  # handlers are fixed per method once registered
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            return handler
        public = full_method.startswith(PUBLIC_PREFIXES)
        if public:
            behavior = self._checked(handler.unary_unary)
        else:
            behavior = self._traced(full_method, self._authenticated(full_method, self._checked(handler.unary_unary)))
        if not full_method.startswith(EXEMPT_PREFIXES):
            behavior = self._bounded(behavior)
        behavior = self._measured(full_method.rsplit("/", 1)[-1], behavior)
        return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=lenient(handler.request_deserializer),
                                                   response_serializer=handler.response_serializer)

    @staticmethod
    def _measured(method: str, behavior: Behavior) -> Behavior:
        """Counts every call by its outcome, those the client gave up on included: a call
        cancelled by the client or past its deadline has its task cancelled (CancelledError,
        no status code on the context), so it is told apart here by the time left."""
        metrics = _MethodMetrics(method)

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
                if code == "OK":
                    given = context.code()
                    if given is not None and given is not grpc.StatusCode.OK:
                        code = given.name
                metrics.count(code)
                metrics.latency.observe(time.perf_counter() - start)
        return call

    def _bounded(self, behavior: Behavior) -> Behavior:
        limit = self.limit
        if limit.limit == 0:
            return behavior

        async def call(request, context: grpc.aio.ServicerContext):
            if limit.in_flight >= limit.limit:
                # Counted as RESOURCE_EXHAUSTED by the metrics around; no span, no key lookup.
                await status.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOAD_MESSAGE,
                                   reason="TOO_MANY_CONCURRENT_CALLS")
            limit.in_flight += 1
            GRPC_IN_FLIGHT.inc()
            try:
                return await behavior(request, context)
            finally:
                limit.in_flight -= 1
                GRPC_IN_FLIGHT.dec()
        return call

    @staticmethod
    def _traced(full_method: str, behavior: Behavior) -> Behavior:
        """A SERVER span per call, continuing the caller's trace from the `traceparent` (and
        `tracestate`) metadata when there is one. The span is started and made current by
        hand: the same as `start_as_current_span` without its generator context managers."""
        name = full_method.lstrip("/")
        service, _, method = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        direct_tracer = telemetry.direct_tracer

        async def call(request, context: grpc.aio.ServicerContext):
            parent = tracing.extract(context.invocation_metadata())
            span = direct_tracer().start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                     record_exception=False, set_status_on_exception=False)
            token = otel_context.attach(trace.set_span_in_context(span))
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
                if code in _SPAN_ERRORS:
                    span.set_status(Status(StatusCode.ERROR, code.name))
                otel_context.detach(token)
                span.end()
        return call

    def _authenticated(self, full_method: str, behavior: Behavior) -> Behavior:
        method = full_method.rsplit("/", 1)[-1]
        keys = self._keys

        async def call(request, context: grpc.aio.ServicerContext):
            key = _bearer(context.invocation_metadata())
            if not key:
                log.info("unauthenticated call refused", extra={"method": method, "reason": "no API key"})
                await status.abort(context, grpc.StatusCode.UNAUTHENTICATED,
                                   "missing API key: send metadata 'authorization: Bearer <key>'",
                                   reason="API_KEY_MISSING")
            try:
                identity: KeyIdentity | None = await keys.identify(key)
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
            trace.get_current_span().set_attribute("billing.tenant_id", identity.tenant_text)
            caller_token = current_caller.set(Caller(tenant_id, identity.actor, api_key_hash=identity.key_hash))
            tenant_token = current_tenant.set(identity.tenant_text)
            keys_token = set_entry_keys(identity.entry_keys)
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                if context.code() == grpc.StatusCode.UNAUTHENTICATED:  # revoked meanwhile
                    keys.forget(identity.key_hash)
                raise
            finally:
                reset_entry_keys(keys_token)
                current_tenant.reset(tenant_token)
                current_caller.reset(caller_token)
        return call

    @staticmethod
    def _checked(behavior: Behavior) -> Behavior:
        """A request its deserializer could not parse (`malformed.lenient`) is INVALID_ARGUMENT."""
        async def call(request, context: grpc.aio.ServicerContext):
            if isinstance(request, MalformedRequest):
                message = f"request: not a valid protobuf message ({request.reason})"
                await status.abort(context, grpc.StatusCode.INVALID_ARGUMENT, message, reason="MALFORMED_REQUEST",
                                   violations=[("request", message)])
            return await behavior(request, context)
        return call

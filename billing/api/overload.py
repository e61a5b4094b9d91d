"""A bound on the calls one process handles at once: beyond it, RESOURCE_EXHAUSTED at once.

Without a bound, a client that sends faster than the database answers makes every call
wait in memory (RSS grows with the queue) until the clients' deadlines cancel them; a fast
refusal instead tells the client to back off and keeps the calls in hand fast.

Not grpc.aio.server(maximum_concurrent_rpcs=...): it refuses in the same way, but before
any interceptor runs the handler, so the refusals appear in no metric, and it counts health
checks too (a saturated replica would then look dead to its orchestrator, not busy).
Health checks and reflection are never refused here.
"""
from __future__ import annotations

from typing import Awaitable, Callable

import grpc

from billing.api import status
from billing.ops.metrics import GRPC_IN_FLIGHT

EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
OVERLOAD_MESSAGE = "the server is at its bound of concurrent calls; retry with backoff"


class ConcurrencyLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError("grpc_max_concurrent_calls must be >= 0 (0: no bound)")
        self.limit = limit
        self.in_flight = 0

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if self.limit == 0 or handler is None or handler.unary_unary is None \
                or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        behavior: Callable[..., Awaitable] = handler.unary_unary

        async def call(request, context: grpc.aio.ServicerContext):
            if self.in_flight >= self.limit:
                # The metrics interceptor (outside this one) counts it as RESOURCE_EXHAUSTED.
                await status.abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOAD_MESSAGE,
                                   reason="TOO_MANY_CONCURRENT_CALLS")
            self.in_flight += 1
            GRPC_IN_FLIGHT.inc()
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1
                GRPC_IN_FLIGHT.dec()

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

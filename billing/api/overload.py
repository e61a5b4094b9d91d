"""A bound on the calls one process handles at once: beyond it, RESOURCE_EXHAUSTED at once.

Without a bound, a client that sends faster than the database answers makes every call
wait in memory (RSS grows with the queue) until the clients' deadlines cancel them; a fast
refusal instead tells the client to back off and keeps the calls in hand fast.

Not grpc.aio.server(maximum_concurrent_rpcs=...): it refuses in the same way, but before
any interceptor runs the handler, so the refusals appear in no metric, and it counts health
checks too (a saturated replica would then look dead to its orchestrator, not busy).
Health checks and reflection are never refused. The check itself runs in the call
interceptor (billing/api/interceptors.py), inside the metrics and outside the span.
"""
from __future__ import annotations

EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
OVERLOAD_MESSAGE = "the server is at its bound of concurrent calls; retry with backoff"


class CallLimit:
    """The bound (0: none) and the calls of the service in hand now."""

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError("grpc_max_concurrent_calls must be >= 0 (0: no bound)")
        self.limit = limit
        self.in_flight = 0

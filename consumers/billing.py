"""The billing consumer: BillingRunRequests from Kafka -> `execute_run`.

Unlike the other strategies it does NOT work in the runner's batch transaction: a run
commits chunk by chunk (one transaction per up to 2,000 subscriptions), so that a long run
neither holds one huge transaction nor loses everything on a crash. It therefore takes
the pool in its constructor and ignores `conn`. The runner stores the offset only after
`execute_run` returned, so a crash mid-run redelivers the request and the run continues
where it stopped: execution is at-least-once, which is safe because a run is idempotent
(billed_periods refuses a period billed twice, a completed run returns at once).

Bad requests (undecodable, not UUIDs, naming no run) are logged and skipped, not
dead-lettered: only this service's own outbox writes the topic, so one is a bug to fix,
and there is no billing-runs DLQ topic in the settings yet.

Each request is one span (`billing run`), a child of the trace that asked for the run (the
request's `traceparent` header, written into the outbox by RunBilling or the scheduler), so
the run's chunk transactions, its invoice-request outbox rows and their publishing stay in
the trace of the call that started it.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid

import asyncpg
from opentelemetry import trace

from billing import codec
from billing.ops import tracing
from billing.ops.logging import current_tenant
from billing.services.billing import execute_run
from consumers.runner import BatchResult, Message

log = logging.getLogger(__name__)


class BillingRunStrategy:
    """A BatchStrategy for the billing-runs topic."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        # Recorded on the shards this consumer executes (billing_run_shards.executed_by).
        self.executor = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    async def process(self, conn: asyncpg.Connection, batch: list[Message]) -> BatchResult:
        executed = bad = 0
        for msg in batch:
            try:
                request = codec.decode(codec.Schema.BILLING_RUN_REQUEST, msg.value)
            except codec.CodecError as exc:
                bad += 1
                log.error("undecodable billing run request skipped: %s", exc,
                          extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset})
                continue
            try:
                tenant_id, run_id = uuid.UUID(request["tenant_id"]), uuid.UUID(request["run_id"])
            except ValueError:
                bad += 1
                log.error("billing run request without UUIDs skipped",
                          extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset})
                continue
            # One request per shard (keys spread them over the partitions, so over the
            # consumers of the group); the run completes when its last shard does.
            span = tracing.start_message_span("billing run", msg.headers, attributes={
                "messaging.system": "kafka", "messaging.destination.name": msg.topic,
                "messaging.kafka.offset": msg.offset, "billing.tenant_id": str(tenant_id),
                "billing.run_id": str(run_id)})
            token = current_tenant.set(str(tenant_id))
            try:
                with trace.use_span(span, end_on_exit=True):
                    run = await execute_run(self.pool, tenant_id, run_id, shard=request["shard"],
                                    executor=self.executor)
                    if run is not None:
                        span.set_attribute("billing.run_status", str(getattr(run, "status", "")))
            finally:
                current_tenant.reset(token)
            if run is None:  # logged by execute_run
                bad += 1
                continue
            executed += 1
        return BatchResult(counters={"runs": executed, "bad_requests": bad})

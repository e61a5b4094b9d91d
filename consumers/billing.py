"""The billing consumer: BillingRunRequests from Kafka -> a shard recorded as a durable job.

In the runner's batch transaction it only records the shard (billing_runs.record_shard_request)
and its offsets commit with it at once; the billing role's executor (services/run_executor.py)
claims the shard and executes it in transactions of its own (docs/billing.md, "Durable
run jobs"). A request repeated (a redelivery) records nothing new.

Bad requests are dead-lettered to the billing-runs DLQ topic with the reason:

    undecodable      not a BillingRunRequest the codec reads
    invalid_request  tenant_id or run_id is not a UUID
    unknown_run      the tenant has no such run (or there is no such tenant)
    unknown_shard    the run exists but has no such shard (not 0 <= shard < its shard_count)

Only this service's outbox writes the topic, in the transaction that records the run, so
none of these is a request that is merely early: each is a bug (or a foreign producer) to
look into. Database errors are never dead-lettered: they propagate and the runner retries
the batch. Each request is one span (`billing run request`), a child of the trace that
asked for the run; its traceparent is kept with the shard for the execution's span.
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable

from opentelemetry import trace

from billing import codec
from billing.ops import tracing
from billing.ops.logging import current_tenant
from billing.services.billing_runs import ShardRequest, record_shard_request
from billing.services.uow import ConnectionScope, in_batch
from consumers.runner import BatchResult, DeadLetter, Message

log = logging.getLogger(__name__)

# The dead-letter reasons of this consumer (a fixed set: they are metric labels).
UNDECODABLE = "undecodable"
INVALID_REQUEST = "invalid_request"
UNKNOWN_RUN = "unknown_run"
UNKNOWN_SHARD = "unknown_shard"
REASONS = (UNDECODABLE, INVALID_REQUEST, UNKNOWN_RUN, UNKNOWN_SHARD)


class BillingRunStrategy:
    """A BatchStrategy for the billing-runs topic. `on_recorded` (the executor's wake) is
    called when a batch recorded shards."""

    dead_letter_reasons = (UNDECODABLE, INVALID_REQUEST, UNKNOWN_RUN, UNKNOWN_SHARD)

    def __init__(self, on_recorded: Callable[[], None] | None = None):
        self.on_recorded = on_recorded

    async def process(self, conn, batch: list[Message]) -> BatchResult:
        recorded = 0
        dead: list[DeadLetter] = []
        scope = in_batch(conn)
        for msg in batch:
            letter = await self._record(scope, msg)
            if letter is not None:
                dead.append(letter)
            else:
                recorded += 1
        if recorded and self.on_recorded is not None:
            self.on_recorded()  # early (before the commit) is harmless: the executor polls again
        return BatchResult(dead_letters=dead, counters={"runs": recorded})

    async def _record(self, scope: ConnectionScope, msg: Message) -> DeadLetter | None:
        try:
            request = codec.decode(codec.Schema.BILLING_RUN_REQUEST, msg.value)
        except codec.CodecError as exc:
            return DeadLetter(msg, UNDECODABLE, str(exc))
        try:
            tenant_id, run_id = uuid.UUID(request["tenant_id"]), uuid.UUID(request["run_id"])
        except ValueError:
            return DeadLetter(msg, INVALID_REQUEST, f"tenant_id {request['tenant_id'][:64]!r} and run_id "
                                                    f"{request['run_id'][:64]!r} must be UUIDs")
        span = tracing.start_message_span("billing run request", msg.headers, attributes={
            "messaging.system": "kafka", "messaging.destination.name": msg.topic,
            "messaging.kafka.offset": msg.offset, "billing.tenant_id": str(tenant_id),
            "billing.run_id": str(run_id), "billing.run_shard": request["shard"]})
        token = current_tenant.set(str(tenant_id))
        try:
            with trace.use_span(span, end_on_exit=True):
                letter = await self._check_and_record(scope, msg, tenant_id, run_id, request)
                if letter is not None:
                    span.set_attribute("billing.dead_letter_reason", letter.reason)
                    tracing.record_error(span, f"dead-lettered: {letter.reason}")
                return letter
        finally:
            current_tenant.reset(token)

    @staticmethod
    async def _check_and_record(scope: ConnectionScope, msg: Message, tenant_id: uuid.UUID, run_id: uuid.UUID,
                                request: dict) -> DeadLetter | None:
        traceparent = msg.headers.get("traceparent", b"")
        traceparent = traceparent.decode(errors="replace") if isinstance(traceparent, bytes) else traceparent or ""
        shard = request["shard"]
        recorded = await record_shard_request(scope, tenant_id, run_id, shard, traceparent[:200])
        if recorded.outcome is ShardRequest.UNKNOWN_RUN:
            return DeadLetter(msg, UNKNOWN_RUN, f"tenant {tenant_id} has no billing run {run_id}")
        if recorded.outcome is ShardRequest.UNKNOWN_SHARD:
            return DeadLetter(msg, UNKNOWN_SHARD, f"shard {shard} of run {run_id}, which has "
                                                  f"{recorded.shard_count} shard(s) (the request says shard_count "
                                                  f"{request['shard_count']})")
        return None

"""The billing consumer: BillingRunRequests from Kafka -> `execute_run`.

Unlike the other strategies it does NOT work in the runner's batch transaction: a run
commits chunk by chunk (one transaction per up to 2,000 subscriptions), so that a long run
neither holds one huge transaction nor loses everything on a crash. It therefore takes
the pool in its constructor; the runner's `conn` serves only the check that the run and
its shard exist (a read, in a savepoint). The runner stores the offset only after
`execute_run` returned, so a crash mid-run redelivers the request and the run continues
where it stopped: execution is at-least-once, which is safe because a run is idempotent
(billed_periods refuses a period billed twice, a completed run returns at once).

Bad requests are dead-lettered to the billing-runs DLQ topic (`billing.billing-runs.dlq.v1`)
with the reason, like usage events and commands (consumers/dlq.py: original key, value and
headers plus the `dlq.*` headers):

    undecodable      not a BillingRunRequest the codec reads
    invalid_request  tenant_id or run_id is not a UUID
    unknown_run      the tenant has no such run (or there is no such tenant)
    unknown_shard    the run exists but has no such shard (not 0 <= shard < its shard_count)

Only this service's outbox writes the topic, and it writes a request in the transaction
that records the run, with shards 0..shard_count-1, so none of these can be a request
that is merely early: each is a bug (or a foreign producer) to look into, and the DLQ keeps
it for that instead of a log line. A shard outside the run's shard count is dead-lettered
for the same reason: the run's shard count is fixed when the run is recorded, so no later
state makes the request valid, and executing it would bill nothing (`execute_run` refuses
it). The check reads the run's own row, whatever its status, so an out-of-range shard of a
completed run is dead-lettered too.

Database errors are never dead-lettered: they propagate, the runner rolls the batch back
and retries it after a backoff (consumers/runner.py), as before.

Each request is one span (`billing run`), a child of the trace that asked for the run (the
request's `traceparent` header, written into the outbox by RunBilling or the scheduler), so
the run's chunk transactions, its invoice-request outbox rows and their publishing stay in
the trace of the call that started it. A request dead-lettered after its ids were read is
marked on its span (`billing.dead_letter_reason`, error status).
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
from billing.store import billing as billing_store
from billing.store.db import ConnectionScope
from consumers.runner import BatchResult, DeadLetter, Message

log = logging.getLogger(__name__)

# The dead-letter reasons of this consumer (a fixed set: they are metric labels).
UNDECODABLE = "undecodable"
INVALID_REQUEST = "invalid_request"
UNKNOWN_RUN = "unknown_run"
UNKNOWN_SHARD = "unknown_shard"
REASONS = (UNDECODABLE, INVALID_REQUEST, UNKNOWN_RUN, UNKNOWN_SHARD)


class BillingRunStrategy:
    """A BatchStrategy for the billing-runs topic."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        # Recorded on the shards this consumer executes (billing_run_shards.executed_by).
        self.executor = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    async def process(self, conn: asyncpg.Connection, batch: list[Message]) -> BatchResult:
        executed = 0
        dead: list[DeadLetter] = []
        scope = ConnectionScope(conn)
        for msg in batch:
            try:
                request = codec.decode(codec.Schema.BILLING_RUN_REQUEST, msg.value)
            except codec.CodecError as exc:
                dead.append(DeadLetter(msg, UNDECODABLE, str(exc)))
                continue
            try:
                tenant_id, run_id = uuid.UUID(request["tenant_id"]), uuid.UUID(request["run_id"])
            except ValueError:
                dead.append(DeadLetter(msg, INVALID_REQUEST, f"tenant_id {request['tenant_id'][:64]!r} and run_id "
                                                             f"{request['run_id'][:64]!r} must be UUIDs"))
                continue
            shard = request["shard"]
            # One request per shard (keys spread them over the partitions, so over the
            # consumers of the group); the run completes when its last shard does.
            span = tracing.start_message_span("billing run", msg.headers, attributes={
                "messaging.system": "kafka", "messaging.destination.name": msg.topic,
                "messaging.kafka.offset": msg.offset, "billing.tenant_id": str(tenant_id),
                "billing.run_id": str(run_id), "billing.run_shard": shard})
            token = current_tenant.set(str(tenant_id))
            try:
                with trace.use_span(span, end_on_exit=True):
                    letter = await self._check(scope, msg, tenant_id, run_id, request)
                    if letter is None:
                        run = await execute_run(self.pool, tenant_id, run_id, shard=shard, executor=self.executor)
                        if run is None:  # gone since the check: runs are never deleted, but never skip silently
                            letter = DeadLetter(msg, UNKNOWN_RUN, f"tenant {tenant_id} has no billing run {run_id}")
                        else:
                            span.set_attribute("billing.run_status", str(getattr(run, "status", "")))
                    if letter is not None:
                        span.set_attribute("billing.dead_letter_reason", letter.reason)
                        tracing.record_error(span, f"dead-lettered: {letter.reason}")
            finally:
                current_tenant.reset(token)
            if letter is not None:
                dead.append(letter)
                continue
            executed += 1
        return BatchResult(dead_letters=dead, counters={"runs": executed})

    @staticmethod
    async def _check(scope: ConnectionScope, msg: Message, tenant_id: uuid.UUID, run_id: uuid.UUID,
                     request: dict) -> DeadLetter | None:
        """A dead letter when the run or its shard does not exist, else None. A database
        error propagates (the runner retries the batch): it says nothing about the request."""
        async with scope.tenant_tx(tenant_id) as c:
            row = await billing_store.get_run(c, tenant_id, run_id)
        if row is None:
            return DeadLetter(msg, UNKNOWN_RUN, f"tenant {tenant_id} has no billing run {run_id}")
        shard, count = request["shard"], row["shard_count"]
        if not 0 <= shard < count:
            return DeadLetter(msg, UNKNOWN_SHARD, f"shard {shard} of run {run_id}, which has {count} shard(s) "
                                                  f"(the request says shard_count {request['shard_count']})")
        return None

"""The billing scheduler: starts a billing run for every tenant on a fixed cadence, so
nobody has to call RunBilling for billing to happen.

Idempotent per tenant and time: the run for the slot starting at T has the idempotency
key `scheduler:<T>` and as_of T, so several schedulers (every `billing serve` replica may
run one) and restarts all land on the same run for a slot, never a second one.

Automatic resumption (`AutoResumer`, and the start of every scheduler round): a paused
subscription whose `pause_resumes_at` has come is resumed exactly as ResumeSubscription
would resume it (billing.services.auto_resume.resume_due_batch), taking effect AT
`pause_resumes_at`, with actor "system:scheduler". Per tenant (under the tenant's
row-level security), in transactions of at most `batch_size` subscriptions locked FOR
UPDATE SKIP LOCKED, so several replicas split the work and a subscription is resumed once.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timezone

from billing.ops.metrics import AUTO_RESUMED
from billing.ops.tracing import tracer
from billing.services import billing_runs
from billing.services import auto_resume
from billing.services import maintenance
from billing.services.context import Caller
from billing.store import tenants as tenants_store
from billing.store.db import Database

log = logging.getLogger(__name__)

ACTOR = "system:scheduler"


def slot_start(now: datetime, interval_s: int) -> datetime:
    """The start of the scheduling slot that contains `now` (slots aligned to the epoch)."""
    seconds = int(now.timestamp())
    return datetime.fromtimestamp(seconds - seconds % interval_s, timezone.utc)


async def _tenants(db: Database) -> list[uuid.UUID]:
    async with db.tx() as conn:
        return await tenants_store.all_ids(conn)


async def resume_due_for_tenant(db: Database, tenant_id, now: datetime, batch_size: int) -> int:
    """Resume every paused subscription of one tenant whose resume time is at or before
    `now`, `batch_size` per transaction; return how many were resumed. Rows another pass
    holds are skipped (that pass resumes them); a subscription that fails is skipped for
    the rest of this pass and tried again by the next."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    caller = Caller(tenant_id, ACTOR)
    resumed, failed = 0, list[uuid.UUID]()
    while True:
        batch = await auto_resume.resume_due_batch(db, caller, now, batch_size, failed)
        resumed += len(batch.resumed)
        failed += batch.failed
        if batch.resumed:
            AUTO_RESUMED.labels("resumed").inc(len(batch.resumed))
        if batch.failed:
            AUTO_RESUMED.labels("failed").inc(len(batch.failed))
        if len(batch.resumed) + len(batch.failed) < batch_size:
            return resumed


async def resume_due(db: Database, now: datetime, batch_size: int) -> int:
    """One automatic-resume pass over every tenant; return how many subscriptions it resumed.
    Idempotent: a second pass (or a concurrent one) finds nothing left to resume."""
    total = 0
    for tenant_id in await _tenants(db):
        total += await resume_due_for_tenant(db, tenant_id, now, batch_size)
    return total


async def schedule_once(db: Database, now: datetime, interval_s: int, resume_batch_size: int = 0, *,
                        run_shards: int = 1) -> int:
    """Request this slot's run for every tenant; return how many tenants were asked.

    With `resume_batch_size`, each tenant's due resumes are carried out first, so a run never
    closes as paused a period in which a subscription was due to resume by `now`."""
    slot = slot_start(now, interval_s)
    key = f"scheduler:{slot.isoformat()}"
    tenants = await _tenants(db)
    for tenant_id in tenants:
        if resume_batch_size > 0:
            try:
                await resume_due_for_tenant(db, tenant_id, now, resume_batch_size)
            except Exception:  # noqa: BLE001 - the run goes on; the auto-resume pass retries
                log.exception("resuming due subscriptions before the billing run failed")
        await billing_runs.run_billing(db, Caller(tenant_id, ACTOR), key, key, slot, shards=run_shards)
    return len(tenants)


class _Periodic:
    """A task of `billing serve` repeated every `interval_s` until stopped: one span per
    round; a failed round is logged and retried next round, never a dead loop."""

    span_name = ""
    failure = ""

    def __init__(self, db: Database, interval_s: float):
        self.db = db
        self.interval_s = interval_s
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def round(self, span) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while not self._stop.is_set():
            with tracer.start_as_current_span(self.span_name, record_exception=True) as span:
                try:
                    await self.round(span)
                except Exception as exc:  # noqa: BLE001 - retried next round
                    span.record_exception(exc)
                    log.exception(self.failure)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)
            except asyncio.TimeoutError:
                pass


class Scheduler(_Periodic):
    """A role of `billing serve`: every `interval_s`, the current slot's runs (each tenant's
    due resumes first, `resume_batch_size` per transaction; 0: none)."""

    # One trace per round: the runs it requests (and their invoice requests) are in it.
    span_name, failure = "scheduler round", "scheduling billing runs failed"

    def __init__(self, db: Database, interval_s: int, resume_batch_size: int = 0, *, run_shards: int = 1):
        super().__init__(db, interval_s)
        self.resume_batch_size = resume_batch_size
        self.run_shards = billing_runs.check_shards(run_shards)

    async def round(self, span) -> None:
        count = await schedule_once(self.db, datetime.now(timezone.utc), int(self.interval_s), self.resume_batch_size,
                                    run_shards=self.run_shards)
        span.set_attribute("billing.tenants", count)
        log.info("billing runs scheduled", extra={"tenants": count})


class AutoResumer(_Periodic):
    """Part of the `scheduler` role of `billing serve`: every `interval_s`, an automatic-resume
    pass (`resume_due`). Safe with any number of replicas (SKIP LOCKED, one resume per pause)."""

    span_name, failure = "auto-resume pass", "automatic resume pass failed"

    def __init__(self, db: Database, interval_s: float, batch_size: int):
        super().__init__(db, interval_s)
        self.batch_size = batch_size

    async def round(self, span) -> None:
        count = await resume_due(self.db, datetime.now(timezone.utc), self.batch_size)
        span.set_attribute("billing.subscriptions", count)
        if count:
            log.info("paused subscriptions resumed as scheduled", extra={"subscriptions": count})


class PartitionMaintainer(_Periodic):
    """Part of the `scheduler` role of `billing serve`: every `interval_s`, the usage_events
    partitions of this month and the next `months_ahead` are created if missing. Any number
    of replicas: creation is serialised in the database and idempotent."""

    span_name, failure = "partition maintenance", "creating usage partitions failed"

    def __init__(self, db: Database, interval_s: float, months_ahead: int):
        super().__init__(db, interval_s)
        self.months_ahead = months_ahead

    async def round(self, span) -> None:
        async with self.db.tx() as conn:
            created = await maintenance.create_ahead(conn, datetime.now(timezone.utc), self.months_ahead)
        span.set_attribute("billing.partitions_created", len(created))
        if created:
            log.info("usage partitions created", extra={"partitions": created})

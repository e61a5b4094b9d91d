"""The billing scheduler: starts a billing run for every tenant on a fixed cadence, so
nobody has to call RunBilling for billing to happen.

Idempotent per tenant and time: the run for the slot starting at T has the idempotency
key `scheduler:<T>` and as_of T, so several schedulers (every `billing serve` replica may
run one) and restarts all land on the same run for a slot, never a second one.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from billing.ops.tracing import tracer
from billing.services import billing
from billing.services.context import Caller
from billing.store.db import Database

log = logging.getLogger(__name__)


def slot_start(now: datetime, interval_s: int) -> datetime:
    """The start of the scheduling slot that contains `now` (slots aligned to the epoch)."""
    seconds = int(now.timestamp())
    return datetime.fromtimestamp(seconds - seconds % interval_s, timezone.utc)


async def schedule_once(db: Database, now: datetime, interval_s: int) -> int:
    """Request this slot's run for every tenant; return how many tenants were asked."""
    slot = slot_start(now, interval_s)
    key = f"scheduler:{slot.isoformat()}"
    async with db.tx() as conn:
        tenants = [r[0] for r in await conn.fetch("select tenant_ids()")]
    for tenant_id in tenants:
        await billing.run_billing(db, Caller(tenant_id, "system:scheduler"), key, key, slot)
    return len(tenants)


class Scheduler:
    """A role of `billing serve`: every `interval_s`, the current slot's runs."""

    def __init__(self, db: Database, interval_s: int):
        self.db = db
        self.interval_s = interval_s
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            # One trace per round: the runs it requests (and their invoice requests) are in it.
            with tracer.start_as_current_span("scheduler round", record_exception=True) as span:
                try:
                    count = await schedule_once(self.db, datetime.now(timezone.utc), self.interval_s)
                    span.set_attribute("billing.tenants", count)
                    log.info("billing runs scheduled", extra={"tenants": count})
                except Exception as exc:  # noqa: BLE001 - a failed round is retried next round, never a dead loop
                    span.record_exception(exc)
                    log.exception("scheduling billing runs failed")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)
            except asyncio.TimeoutError:
                pass

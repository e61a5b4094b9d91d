"""Previews: what a billing run or a change would bill, computed by the very code that bills
it, changing nothing (docs/time.md, "Previews").

* PreviewInvoice reads in a READ ONLY transaction and closes the subscription's period(s)
  with the run's own functions (`period_close.preview_closes`), writing nothing.
* A change with `preview_only` runs the change's own code path in its transaction, the
  lines it bills collected in a `ChangePreview`, and then rolls the transaction back
  (`Rollback`): no state, audit row, outbox row, pending line or idempotency record stays.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing.domain.invoicing import ClosedPeriod
from billing.domain.pricing import Line
from billing.services import clock_time, paging, period_close
from billing.services.context import Caller
from billing.services.errors import NotFound
from billing.store import subscriptions as store


@dataclass
class ChangePreview:
    """Handed to a change by a caller that asked for `preview_only`; the change fills it
    with the lines it bills and is then rolled back."""

    lines: list[Line] = field(default_factory=list)
    currency: str = ""
    invoice_now: bool = False  # the lines would go out in an invoice request at once

    def collect(self, lines: list[Line], currency: str, invoice_now: bool) -> None:
        self.lines.extend(lines)
        self.currency = currency
        self.invoice_now = self.invoice_now or (invoice_now and bool(lines))


class Rollback(Exception):
    """Raised inside a previewed change's transaction once its outcome is known, so that
    the transaction (or the savepoint) rolls back; carries the outcome out."""

    def __init__(self, outcome: Any):
        super().__init__("preview: rolled back")
        self.outcome = outcome


@dataclass(frozen=True)
class InvoicePreviews:
    subscription_id: uuid.UUID
    invoices: list[ClosedPeriod]


async def preview_invoice(db, caller: Caller, subscription_id: str, at: datetime | None) -> InvoicePreviews:
    """The invoice request(s) a run would emit for the subscription's current period if it
    closed at `at` (default: now, or its test clock's time); see `period_close.preview_closes`."""
    sub_uuid = paging.parse_uuid(subscription_id, "subscription_id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        # Going read-only is allowed at any point of a transaction: a write here would fail.
        await conn.execute("set transaction read only")
        sub = await store.get(conn, caller.tenant_id, sub_uuid)
        if sub is None:
            raise NotFound("subscription", subscription_id)
        t = await clock_time.for_subscription(conn, caller.tenant_id, sub_uuid)
        closed = await period_close.preview_closes(conn, caller, sub, at or t.now, t.test_clock_id)
    return InvoicePreviews(sub_uuid, closed)

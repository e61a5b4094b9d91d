"""Amount thresholds and progressive billing, in the usage batch's transaction (docs/alerts.md,
docs/billing.md "Progressive billing"); called by services/usage_alerts.after_batch.

Only the batch's subscriptions that have a live amount threshold are priced, and only when
the batch added usage to their current period: the running amount is that period's usage
charges priced as the close prices them (`period_reads.usage_of_period`, the run's
`price_usage`). A crossing is recorded like a quantity threshold's (key threshold + period,
ON CONFLICT DO NOTHING): exactly once. An `invoice_on_cross` crossing also writes, in the
same transaction, an invoice request (reason `threshold`) for the running amount less what
the period's threshold invoices charged already, and records it in progressive_invoices,
which the period's close subtracts. The subscription row is held KEY SHARE by the batch
(store/usage.subscriptions), so a close of the period waits for this batch, or this batch
finds the period closed (the current period moved on) and writes no invoice.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing.domain.plan_storage import plan_from_dict
from billing.domain.plans import PlanSpec
from billing.domain.progressive import running_lines, threshold_invoice
from billing.domain.pricing import Line, total
from billing.domain.thresholds import crossing_key
from billing.services import invoice_requests, period_reads
from billing.store import plans as plans_store
from billing.store import progressive as progressive_store
from billing.store import subscriptions as subs_store
from billing.store import thresholds as store

# Plans never change once created: one process-wide cache of the specs amount thresholds price.
_PLANS: dict[tuple[uuid.UUID, uuid.UUID], PlanSpec] = {}
_MAX_PLANS = 10_000
_PRICED = ("active", "paused")  # a trial's usage is free; a canceled subscription has no open period


@dataclass(frozen=True)
class AmountCrossing:
    threshold_id: uuid.UUID
    subscription_id: uuid.UUID
    value: Decimal
    recurring: bool
    amount: Decimal
    currency: str
    period_start: datetime
    period_end: datetime
    key: datetime
    crossed_at: datetime
    invoice_request_id: uuid.UUID | None
    plan_level: bool = False  # a plan's threshold: its alert id names the subscription


async def _plan(conn: asyncpg.Connection, tenant_id: uuid.UUID, plan_id: uuid.UUID) -> PlanSpec:
    spec = _PLANS.get((tenant_id, plan_id))
    if spec is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        spec = plan_from_dict((await plans_store.specs(conn, tenant_id, [plan_id]))[0][1])
        _PLANS[(tenant_id, plan_id)] = spec
    return spec


async def check(conn: asyncpg.Connection, tenant_id: uuid.UUID, rows: list[dict]) -> list[AmountCrossing]:
    """The amount thresholds newly crossed by a batch, recorded, with their threshold invoices
    written. `rows`: the live amount thresholds of the batch's subscriptions, in subscription
    order, each with `added` (the batch added usage to the subscription's current period), as
    the batch's statement read them (store/thresholds.AMOUNT_FIELDS)."""
    by_sub: dict[uuid.UUID, list[dict]] = {}
    for r in rows:
        by_sub.setdefault(r["subscription_id"], []).append(r)
    out: list[AmountCrossing] = []
    for sub_id, ths in by_sub.items():  # in subscription order: the advisory locks too
        first = ths[0]
        start, end = first["current_period_start"], first["current_period_end"]
        if first["status"] not in _PRICED or start is None or not first["added"]:
            continue  # a late event of a closed period: billed as late usage, not here
        invoicing = any(th["invoice_on_cross"] for th in ths)
        if invoicing:
            await progressive_store.lock_period(conn, tenant_id, sub_id)
        spec = await _plan(conn, tenant_id, first["plan_id"])
        usage, _ = await period_reads.usage_of_period(conn, tenant_id, sub_id, spec, start)
        lines = running_lines(spec, usage, start, end)
        amount = total(lines)
        hits = {th["id"]: th for th in ths if amount >= th["value"]}
        if not hits:
            continue
        recorded = await store.record_amount_crossings(
            conn, tenant_id, sub_id, [(th["id"], crossing_key(th["recurring"], start), th["clock_now"]) for th in hits.values()])
        for rec in sorted(recorded, key=lambda x: (hits[x["threshold_id"]]["value"], x["threshold_id"])):
            th = hits[rec["threshold_id"]]
            request = None
            if th["invoice_on_cross"]:
                request = await _invoice(conn, tenant_id, th, lines, start, end, spec.currency)
            out.append(AmountCrossing(th["id"], sub_id, th["value"], th["recurring"], amount, spec.currency, start,
                                      end, rec["period_start"], rec["crossed_at"], request, th["plan_level"]))
    return out


async def _invoice(conn: asyncpg.Connection, tenant_id: uuid.UUID, th: dict, lines: list[Line],
                   start: datetime, end: datetime, currency: str) -> uuid.UUID | None:
    """The threshold invoice of a crossing: the running amount less what the period's threshold
    invoices charged; None when that leaves nothing to charge."""
    sub_id = th["subscription_id"]
    billed = await progressive_store.billed(conn, tenant_id, sub_id, start)
    charged = threshold_invoice(lines, billed, start, end)
    if not charged:
        return None
    sub = await subs_store.get(conn, tenant_id, sub_id)
    assert sub is not None  # held KEY SHARE by the batch
    # the subscription is in request_id's name: a plan's threshold invoices each subscription once
    ident = invoice_requests.request_id(tenant_id, sub_id, f"threshold:{th['id']}:{start.isoformat()}")
    clock = th["test_clock_id"]
    await invoice_requests.enqueue(conn, tenant_id, [invoice_requests.encode(
        tenant_id=tenant_id, invoice_request_id=ident, run_id=invoice_requests.NO_RUN, sub=sub, currency=currency,
        lines=charged, period=(start, end), issued_at=th["clock_now"] if clock else None, test_clock_id=clock,
        reason=invoice_requests.THRESHOLD, threshold_id=th["id"])], clock)
    await progressive_store.insert(conn, tenant_id, sub_id, start, th["id"], ident, total(charged))
    return ident

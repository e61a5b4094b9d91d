"""What a subscription change bills: its proration lines (and an immediate cancel's final
usage) put where the proration behavior says - pending lines for the next invoice, or one
invoice request now (docs/proration.md)."""
from __future__ import annotations

from datetime import datetime

import asyncpg

from billing.domain import proration as pr
from billing.domain.invoice_assembly import usage_charge_lines
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import decimal_to_str
from billing.domain.plans import PlanSpec
from billing.domain.pricing import Line, price_usage, total
from billing.domain.progressive import with_billed
from billing.domain.subscriptions import Change, Subscription
from billing.services import invoice_requests, period_reads
from billing.services.clock_time import SubscriptionTime
from billing.services.previews import ChangePreview
from billing.services.context import Caller
from billing.store import billed_periods, pending_lines
from billing.store import progressive as progressive_store


async def charged_in_advance(conn: asyncpg.Connection, caller: Caller, sub: Subscription) -> bool:
    if sub.current_period_start is None:
        return False
    return sub.id in await billed_periods.opened_by_a_run(conn, caller.tenant_id, [(sub.id, sub.current_period_start)])


async def _final_usage(conn: asyncpg.Connection, caller: Caller, sub: Subscription, spec: PlanSpec,
                       end: datetime) -> list[Line]:
    """Usage of the current period up to an immediate cancel, priced like a period close
    (the run never bills a canceled subscription again), less what its threshold invoices
    charged. A trial's usage is free."""
    if (sub.status is SubscriptionStatus.TRIALING or sub.current_period_start is None
            or sub.current_period_end is None or not spec.usage_charges):
        return []
    start = sub.current_period_start
    end = min(end, sub.current_period_end)  # a cancel after the period ended (run not yet there)
    if end <= start:
        return []
    usage, _ = await period_reads.usage_of_period(conn, caller.tenant_id, sub.id, spec, start)
    lines = usage_charge_lines(price_usage(spec, usage, start, end), spec.currency, start, end)
    # What the period's threshold invoices charged already (progressive billing) is not charged again.
    return list(with_billed(lines, await progressive_store.billed(conn, caller.tenant_id, sub.id, start), start, end))



async def bill(conn: asyncpg.Connection, caller: Caller, source: str, before: Subscription, spec: PlanSpec,
                change: Change, settled: pr.Proration, behavior: pr.Behavior, *,
                final_at: datetime | None = None, preview: ChangePreview | None = None,
                clock: SubscriptionTime | None = None) -> Change:
    """Put the proration lines where `behavior` says and return the change, its details
    naming what was billed.

    NEXT_INVOICE: into pending_lines, for the subscription's next invoice request.
    INVOICE_NOW, and always for an immediate cancel (`final_at`; the run bills a canceled
    subscription no more): one invoice request now, with every line of the subscription not
    billed yet, these lines and (cancel) the usage of the cut-short period; the lines are
    kept in pending_lines, marked billed by that request. NONE: the domain made no lines.
    `preview`: collects the lines (the caller rolls the change back).
    `clock`: the subscription's time, when it lives on a test clock (its request is issued
    at the clock's time and marked as the clock's).
    """
    tenant = caller.tenant_id
    sub = settled.subscription
    lines = list(settled.lines)
    details = dict(change.details)
    currency = spec.currency
    invoice_now = final_at is not None or behavior is pr.Behavior.INVOICE_NOW
    if final_at is not None:
        lines += await _final_usage(conn, caller, before, spec, final_at)
    if preview is not None:
        preview.collect(lines, currency, invoice_now)
    if invoice_now:
        unbilled = (await pending_lines.unbilled(conn, tenant, [sub.id])).get(sub.id, [])
        all_lines = [ln for _, ln in unbilled] + lines
        if all_lines:
            request = invoice_requests.request_id(tenant, sub.id, source)
            clock_id = clock.test_clock_id if clock else None
            await invoice_requests.enqueue(conn, tenant, [invoice_requests.encode(
                tenant_id=tenant, invoice_request_id=request, run_id=invoice_requests.NO_RUN, sub=sub,
                currency=currency, lines=all_lines, issued_at=clock.issued_at if clock else None,
                test_clock_id=clock_id)], clock_id)
            await pending_lines.mark_billed(conn, tenant, [i for i, _ in unbilled], [request] * len(unbilled))
            await pending_lines.add(conn, tenant, sub.id, currency, lines, source, invoice_request_id=request)
            details["invoice_request_id"] = str(request)
            details["invoice_total"] = decimal_to_str(total(all_lines))
    elif lines:
        await pending_lines.add(conn, tenant, sub.id, currency, lines, source)
    if settled.lines:
        details["proration_lines"] = str(len(settled.lines))
        details["proration_total"] = decimal_to_str(total(settled.lines))
        details["proration_behavior"] = behavior.value
    return Change(sub, change.event, details)

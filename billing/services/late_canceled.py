"""Late usage of canceled subscriptions: a canceled subscription never closes a period
again, so its late events get an invoice request of their own, billed by the transaction
that completes a run's shard (docs/billing.md, Late usage).

The request id is derived from the events it bills (`late:<sha256 of their sorted ids>`):
each late event is billed once (late_usage_billed's primary key, written in the
transaction of the outbox row), so two committed requests never bill the same set and
never share an id.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import datetime, timezone

import asyncpg

from billing.domain.events import EventType
from billing.domain.money import decimal_to_str
from billing.domain.subscriptions import Subscription
from billing.services import invoice_requests
from billing.services.context import Caller
from billing.services.period_close import CloseContext
from billing.services.period_reads import late_lines, load_plans
from billing.services.run_metrics import ChunkOutcome
from billing.store import audit as audit_store
from billing.store import billed_periods
from billing.store import period_usage as usage_reads
from billing.store import subscription_scans as scans

log = logging.getLogger(__name__)


async def bill(conn: asyncpg.Connection, caller: Caller, ctx: CloseContext, shard: int,
               shard_count: int) -> ChunkOutcome | None:
    """Set-based like a chunk: one query finds (and locks) the candidates, one reads their
    late usage, then bulk writes (outbox rows, audit rows, late_usage_billed), in the
    caller's transaction. Returns the counts to add to the run (None: nothing to bill)."""
    tenant = ctx.tenant_id
    subs = await scans.canceled_with_late_usage(conn, tenant, shard=shard, shard_count=shard_count,
                                                test_clock_id=ctx.test_clock_id)
    if not subs:
        return None
    rows = await _late_rows(conn, tenant, subs)
    await load_plans(conn, tenant, ctx.plans, {s.plan_id for s in subs}
                     | {r["plan_id"] for rs in rows.values() for r in rs if r["plan_id"]})
    chunk = ChunkOutcome()
    invoices: list[invoice_requests.Encoded] = []
    audits: list[tuple] = []
    billed: list[tuple[str, uuid.UUID, uuid.UUID]] = []
    stale = [s.id for s in subs if s.id not in rows]  # their late events were billed between the two reads
    issued = ctx.as_of if ctx.test_clock_id else datetime.now(timezone.utc)
    for sub in (s for s in subs if s.id in rows):
        chunk.due += 1
        try:
            request, events, lines, encoded = await _request(conn, ctx, sub, rows[sub.id], issued)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the others go on
            chunk.fail(sub.id, f"late usage: {type(exc).__name__}: {exc}")
            log.warning("late usage not billed", extra={"subscription_id": str(sub.id),
                                                        "reason": chunk.failures[-1]["reason"]})
            continue
        invoices.append(encoded)
        billed += [(e, sub.id, request) for e in events]
        audits.append(_audit_row(chunk, ctx, sub, encoded[0], events, lines))
    await _write(conn, caller, ctx, invoices, audits, billed)
    if stale:
        await billed_periods.clear_late_pending(conn, tenant, stale)
    return chunk


async def _late_rows(conn: asyncpg.Connection, tenant: uuid.UUID, subs: list[Subscription]) -> dict:
    by_id = {s.id: s for s in subs}
    rows: dict[uuid.UUID, list[dict]] = {}
    for r in await usage_reads.unbilled_late_usage(conn, tenant, list(by_id)):
        r = dict(r)
        sub = by_id[r["subscription_id"]]
        if r["billed_start"] is None and sub.canceled_at is not None:
            # No billed period holds it: the period an immediate cancel cut short (its final
            # request billed it up to the cancel). Its plan is the subscription's (it cannot
            # change after the cancel), it was a trial if it started before the trial's end,
            # and it ended at the cancel.
            r["trial"] = sub.trial_end is not None and r["period_start"] < sub.trial_end
            r["billed_end"] = min(r["period_end"], sub.canceled_at)
        rows.setdefault(sub.id, []).append(r)
    return rows


async def _request(conn: asyncpg.Connection, ctx: CloseContext, sub: Subscription, rows: list[dict],
                   issued: datetime):
    """One subscription's request: (its id, the events it bills, its lines, encoded)."""
    items = (await late_lines(conn, ctx.tenant_id, ctx.plans, [sub], rows)).get(sub.id, [])
    events = sorted(e for ids, _ in items for e in ids)
    lines = [ln for _, ln in items]
    digest = hashlib.sha256("\x00".join(events).encode()).hexdigest()  # NUL is not allowed in an event id
    request = invoice_requests.request_id(ctx.tenant_id, sub.id, f"late:{digest}")
    encoded = invoice_requests.encode(tenant_id=ctx.tenant_id, invoice_request_id=request, run_id=ctx.run_id,
                                      sub=sub, currency=ctx.plans[sub.plan_id].currency, lines=lines,
                                      issued_at=issued, test_clock_id=ctx.test_clock_id)
    return request, events, lines, encoded


def _audit_row(chunk: ChunkOutcome, ctx: CloseContext, sub: Subscription, rid: str, events: list[str],
               lines: list) -> tuple:
    currency = ctx.plans[sub.plan_id].currency
    amount = invoice_requests.amount(lines)
    chunk.add_invoice(currency, amount)  # negative when late usage lowered a price (volume tiers)
    chunk.billed += 1
    start, end = invoice_requests.span(lines)
    details = {"run_id": str(ctx.run_id), "invoice_request_id": rid, "late_events": len(events),
               "period_start": start.isoformat(), "period_end": end.isoformat(),
               "total": decimal_to_str(amount), "currency": currency}
    return sub.id, EventType.LATE_USAGE_BILLED, None, {"details": details}


async def _write(conn: asyncpg.Connection, caller: Caller, ctx: CloseContext, invoices: list, audits: list,
                 billed: list) -> None:
    if not invoices:
        return
    await invoice_requests.enqueue(conn, ctx.tenant_id, invoices, ctx.test_clock_id)
    await audit_store.append_many(conn, ctx.tenant_id, entity_type="subscription", actor=caller.actor,
                                  request_id=str(ctx.run_id), rows=audits)
    marked = await billed_periods.mark_late_billed(conn, ctx.tenant_id, ctx.run_id, billed)
    if marked != len(billed):  # cannot happen (the rows are locked): roll back rather than bill twice
        raise RuntimeError(f"late usage billed concurrently: marked {marked} of {len(billed)} events")

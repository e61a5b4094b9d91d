"""The bulk writes of a chunk of period closes: invoice requests, subscription events, the
subscriptions' new state, audit rows, late usage and pending lines marked billed."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Mapping

import asyncpg

from billing.domain.entitlements import Feature, change_data
from billing.domain.events import EventType
from billing.domain.money import decimal_to_str
from billing.domain.plans import PlanSpec
from billing.domain.subscriptions import Subscription
from billing.services import credit_writes, events, invoice_requests
from billing.services.context import Caller
from billing.services.run_metrics import ChunkOutcome
from billing.store import audit as audit_store
from billing.store import billed_periods, outbox, pending_lines, subscription_scans
from billing.store import credits as credit_store

if TYPE_CHECKING:
    from billing.services.period_close import Billed


@dataclass
class ChunkWrites:
    invoices: list[invoice_requests.Encoded] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)  # outbox rows of the subscription events
    audits: list[tuple] = field(default_factory=list)
    late_billed: list[tuple[str, uuid.UUID, uuid.UUID]] = field(default_factory=list)
    pending_ids: list[uuid.UUID] = field(default_factory=list)
    pending_requests: list[uuid.UUID] = field(default_factory=list)
    columns: set[str] = field(default_factory=set)  # subscription columns changed by some close
    credits: list[credit_store.Entry] = field(default_factory=list)  # ledger rows of the credits burned


async def write(conn: asyncpg.Connection, caller: Caller, run_id: uuid.UUID, request_id: str,
                outcomes: list["Billed"], w: ChunkWrites, test_clock_id: uuid.UUID | None = None) -> None:
    tenant = caller.tenant_id
    await invoice_requests.enqueue(conn, tenant, w.invoices, test_clock_id)  # before the events: the relay keeps outbox order
    await outbox.enqueue_many(conn, tenant, w.events)
    await credit_store.add_entries(conn, tenant, w.credits)  # with its invoice request: never burned twice
    await subscription_scans.advance_subscriptions(
        conn, tenant, [o.closed[-1].subscription for o in outcomes if o.closed], w.columns)
    await audit_store.append_many(conn, tenant, entity_type="subscription", actor=caller.actor,
                                  request_id=request_id, rows=w.audits)
    await billed_periods.mark_late_billed(conn, tenant, run_id, w.late_billed)
    if w.pending_ids:
        await pending_lines.mark_billed(conn, tenant, w.pending_ids, w.pending_requests)


def rows_of(caller: Caller, run_id: uuid.UUID, outcomes: list["Billed"], billed_before: set,
            chunk: ChunkOutcome, plans: Mapping[uuid.UUID, PlanSpec] | None = None) -> ChunkWrites:
    """The rows to write for what `insert_billed_periods` marked (all but `billed_before`);
    counts and totals into `chunk`."""
    w = ChunkWrites()
    run_text = str(run_id)
    for o in outcomes:
        billed = skipped = False
        prev = o.sub
        for i, closed in enumerate(o.closed):
            if not billed_before or (o.sub.id, closed.period_start) not in billed_before:
                billed = True
                _add_billed(w, o, i, chunk)
                burned = o.credits[i] if o.credits else None
                if burned is not None:
                    credit_writes.add(w.credits, w.events, caller, run_id, o.sub, closed, burned)
            else:
                # Billed before, yet the subscription was not advanced past it: advance only
                # (its late usage and pending lines stay unbilled, for the next period).
                skipped = True
            _add_audit_and_event(w, caller, run_text, o, i, prev, plans or {})
            prev = closed.subscription
        if billed:
            chunk.billed += 1
        elif skipped:
            chunk.skipped += 1
    return w


def _add_billed(w: ChunkWrites, o: "Billed", i: int, chunk: ChunkOutcome) -> None:
    closed, payload = o.closed[i], o.payloads[i]
    if payload is None:
        return
    w.invoices.append((o.request_ids[i], payload))
    chunk.add_invoice(closed.currency, closed.total)
    if i == 0:  # late usage and pending lines went into the first closed period
        w.late_billed += [(e, o.sub.id, closed.invoice_request_id) for e in o.late_events]
        w.pending_ids += o.pending
        w.pending_requests += [closed.invoice_request_id] * len(o.pending)


def _add_audit_and_event(w: ChunkWrites, caller: Caller, run_text: str, o: "Billed", i: int,
                         prev: Subscription, plans: Mapping[uuid.UUID, PlanSpec]) -> None:
    closed = o.closed[i]
    # Times as they are: the audit rows' JSON writes them (store.db.json_text).
    details = {"run_id": run_text, "period_start": closed.period_start, "period_end": closed.period_end,
               "invoice_request_id": o.request_ids[i], "total": decimal_to_str(closed.total),
               "currency": closed.currency}
    before, after = _diff(prev, closed.subscription, w.columns)
    after["details"] = details
    w.audits.append((o.sub.id, closed.event, before, after))
    if closed.event == EventType.PERIOD_ADVANCED:
        return  # only a change of status or plan is announced
    _, key, payload, headers = events.build(
        caller, event_type=closed.event, subscription_id=str(o.sub.id), customer_id=o.sub.customer_id,
        occurred_at=closed.period_end, cause=f"billing-run:{closed.invoice_request_id}",
        from_status=prev.status.value, to_status=closed.subscription.status.value,
        data={**details, "period_start": closed.period_start.isoformat(),
              "period_end": closed.period_end.isoformat()})
    w.events.append((events.STREAM, key, payload, json.dumps(headers)))
    # A cancel or a plan change taking effect at the period's end (docs/entitlements.md).
    now = closed.subscription
    data = change_data((prev.status, prev.plan_id, _features(plans, prev.plan_id)),
                       (now.status, now.plan_id, _features(plans, now.plan_id)), closed.event)
    if data is not None:
        _, key, payload, headers = events.build(
            caller, event_type=EventType.ENTITLEMENTS_CHANGED, subscription_id=str(o.sub.id),
            customer_id=o.sub.customer_id, occurred_at=closed.period_end,
            cause=f"billing-run:{closed.invoice_request_id}", from_status=prev.status.value,
            to_status=closed.subscription.status.value, data=data)
        w.events.append((events.STREAM, key, payload, json.dumps(headers)))


def _features(plans: Mapping[uuid.UUID, PlanSpec], plan_id: uuid.UUID) -> tuple[Feature, ...]:
    spec = plans.get(plan_id)  # the chunk's reads hold the plan and the pending one
    return spec.features if spec is not None else ()


_SUB_FIELDS = tuple(f.name for f in fields(Subscription) if f.name != "status")


def _diff(before: Subscription, after: Subscription, columns: set[str]) -> tuple[dict, dict]:
    """The fields a period close changed, and the status, as they were and as they are: the
    audit row of a period close holds these, not two whole snapshots (the full state at any
    point follows from the subscription's earlier rows). Values as they are (times, ids):
    `audit_store.append_many` writes them in the audit trail's JSON form. The changed
    fields, and the status if it changed, go into `columns` (set by set, not key by key)."""
    b: dict = {}
    a: dict = {}
    old, new = before.__dict__, after.__dict__
    for k in _SUB_FIELDS:
        x, y = old[k], new[k]
        if x is not y and x != y:
            b[k], a[k] = x, y
    columns.update(b)
    b["status"], a["status"] = before.status.value, after.status.value
    if before.status is not after.status:
        columns.add("status")
    return b, a

"""Differential test: PreviewInvoice against the run, a preview_only change against the change.

Many random subscriptions (random weekly plans, zones, trials, usage, changes, late events)
on real PostgreSQL. For each one still billed, PreviewInvoice at its current period's end
must equal, line for line, the invoice request the run then emits for that period; for
each change, the preview_only call (same time, same request) must produce exactly the
lines the real change stores, and leave nothing behind.

PREVIEW_DIFF_N sets how many subscriptions (default 1000; the seed: PREVIEW_DIFF_SEED).
"""
from __future__ import annotations

import os
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from billing import codec
from billing.domain.errors import DomainError
from billing.domain.periods import to_us
from billing.services import invoice_requests, previews, subscriptions
from billing.services.context import Caller
from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest
from billing.store import pending_lines
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_scale import _run
from tests.integration.test_plans_api import plan_request

N = int(os.environ.get("PREVIEW_DIFF_N", "1000"))
ZONES = ["UTC", "UTC", "Europe/Dublin", "America/St_Johns", "Asia/Kathmandu", "Australia/Lord_Howe"]
METRICS = [("api_calls", None), ("storage_gb", None), ("seats", "user_id")]


async def _plans(stub, tenant) -> list[str]:
    specs = [
        dict(base_fee="19.99", billing_timing=pb.BILLING_TIMING_IN_ADVANCE),
        dict(base_fee="10.00", billing_timing=pb.BILLING_TIMING_IN_ARREARS),
        dict(base_fee="49.00", billing_timing=pb.BILLING_TIMING_IN_ADVANCE),
        dict(base_fee="5.00", billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=[]),
    ]
    out = []
    for spec in specs:
        req = plan_request(interval=pb.INTERVAL_UNIT_WEEK, trial_days=0, **spec)
        out.append((await stub.CreatePlan(req, metadata=tenant.md)).plan.id)
    return out


def _event(rng: random.Random, tid: uuid.UUID, sid: uuid.UUID, at: datetime) -> UsageEvent:
    metric, prop = rng.choice(METRICS)
    return UsageEvent(str(uuid.uuid4()), str(tid), str(sid), metric, str(rng.randint(0, 400)), to_us(at),
                      {prop: f"u{rng.randint(1, 12)}"} if prop else None)


async def _ingest(db, tid: uuid.UUID, events: list[UsageEvent], now: datetime) -> None:
    async with db.tenant_tx(tid) as conn:
        await ingest(conn, events, now_us=to_us(now), limits=UsageLimits(), plans=PlanCache())


def _when(rng: random.Random, a: datetime, b: datetime) -> datetime:
    return a + timedelta(seconds=rng.randint(0, max(0, int((b - a).total_seconds()) - 1)))


async def _change(db, caller: Caller, rng: random.Random, sub, plans: list[str], at: datetime,
                  preview: previews.ChangePreview | None, request: str):
    """One random change (the same one for the preview and the real call: `rng` is reseeded)."""
    kind = rng.choice(["change_now", "change_now", "change_end", "pause", "cancel_now", "cancel_end"])
    behavior = rng.choice(["", "next_invoice", "invoice_now", "none"])
    sid = str(sub.id)
    if kind.startswith("change"):
        target = rng.choice([p for p in plans if p != str(sub.plan_id)])
        return kind, await subscriptions.change_plan(
            db, caller, request, sid, target, "immediately" if kind == "change_now" else "at_period_end",
            behavior, preview=preview, at=at)
    if kind == "pause":
        return kind, await subscriptions.pause_subscription(db, caller, request, sid, None, preview=preview, at=at)
    return kind, await subscriptions.cancel_subscription(
        db, caller, request, sid, "immediately" if kind == "cancel_now" else "at_period_end", behavior,
        preview=preview, at=at)


async def _counts(conn, tid: uuid.UUID) -> tuple:
    return tuple([await conn.fetchval(f"select count(*) from {t} where tenant_id = $1", tid)
                  for t in ("outbox", "audit_events", "idempotency_keys", "pending_lines", "billed_periods")])


async def _read(db, tid: uuid.UUID, subs: list) -> list:
    async with db.tenant_tx(tid) as conn:
        return [await subscriptions.store.get(conn, tid, s.id) for s in subs]


async def test_preview_equals_the_run_and_preview_only_equals_the_change(service, stub, tenant, admin_conn):
    rng = random.Random(int(os.environ.get("PREVIEW_DIFF_SEED", "21")))
    tid = uuid.UUID(tenant.id)
    caller = Caller(tid, "differential")
    db = service.db
    now = datetime.now(timezone.utc).replace(microsecond=0)
    plans = await _plans(stub, tenant)

    # Subscriptions started 15..29 days ago, some with a short trial, in several zones.
    subs = []
    for i in range(N):
        start = now - timedelta(days=15, seconds=rng.randint(0, 14 * 86400))
        view = await subscriptions.create_subscription(
            db, caller, str(uuid.uuid4()), customer_id=f"c{i}", plan_id=rng.choice(plans), start_at=start,
            billing_anchor=None, trial_days=rng.choice([0, 0, 0, 3]), activate=True, metadata={},
            time_zone=rng.choice(ZONES))
        subs.append(view.subscription)
    events = [_event(rng, tid, s.id, _when(rng, s.start_at, now - timedelta(days=8))) for s in subs for _ in range(3)]
    await _ingest(db, tid, events, now)
    await _run(service, tenant, now - timedelta(days=8))  # closes everything ended by then

    # Every preview_only change first (nothing may stay of any), then the same changes for real.
    subs = await _read(db, tid, subs)
    planned = []
    for sub in subs:
        assert sub.current_period_end is not None and sub.current_period_end <= now
        if rng.random() < 0.6:
            at = _when(rng, max(sub.current_period_start, now - timedelta(days=8)), sub.current_period_end)
            planned.append((sub, at, str(uuid.uuid4()), rng.random()))
    before = await _counts(admin_conn, tid)
    shown_changes = []
    for sub, at, request, seed in planned:
        preview = previews.ChangePreview()
        try:
            kind, view = await _change(db, caller, random.Random(seed), sub, plans, at, preview, request)
        except DomainError as refused:  # a refusal in a preview is the real change's refusal
            kind, view = type(refused).__name__, None
        shown_changes.append((kind, view, preview))
    assert await _counts(admin_conn, tid) == before  # nothing stays of a preview
    changed: list[tuple[str, str, uuid.UUID, previews.ChangePreview]] = []
    refusals = 0
    for (sub, at, request, seed), (kind, view, preview) in zip(planned, shown_changes):
        if view is None:
            with pytest.raises(DomainError) as err:
                await _change(db, caller, random.Random(seed), sub, plans, at, None, request)
            assert type(err.value).__name__ == kind
            refusals += 1
            continue
        kind2, done = await _change(db, caller, random.Random(seed), sub, plans, at, None, request)
        assert kind2 == kind and view.subscription == done.subscription, kind
        changed.append((kind, request, sub.id, preview))
    late = [_event(rng, tid, sub.id, _when(rng, sub.start_at, sub.current_period_start))
            for sub in subs for _ in range(rng.randint(0, 2))]
    current = [_event(rng, tid, sub.id, _when(rng, sub.current_period_start, sub.current_period_end))
               for sub in subs for _ in range(rng.randint(0, 3))]
    await _ingest(db, tid, late + current, now)

    # preview_only lines == the lines the real change stored
    compared_changes = 0
    async with db.tenant_tx(tid) as conn:
        for kind, request, sid, preview in changed:
            prefix = {"change": "change_plan", "pause": "pause", "cancel": "cancel"}[kind.split("_")[0]]
            rows = [r for r in await pending_lines.for_subscription(conn, tid, sid)
                    if r["source"] == f"{prefix}:{request}"]
            stored = [invoice_requests.line_record(pending_lines.to_line(r)) for r in rows]
            assert [invoice_requests.line_record(ln) for ln in preview.lines] == stored, (kind, sid)
            compared_changes += bool(stored)

    # PreviewInvoice at each period's end, then the run
    shown: dict[str, dict] = {}
    for fresh in await _read(db, tid, subs):
        if fresh.status.value == "canceled":
            continue
        found = await previews.preview_invoice(db, caller, str(fresh.id), fresh.current_period_end)
        first = found.invoices[0]
        assert (first.period_start, first.period_end) == (fresh.current_period_start, fresh.current_period_end)
        if first.lines:
            shown[str(first.invoice_request_id)] = invoice_requests.invoice_record(
                tenant_id=tid, invoice_request_id=first.invoice_request_id, run_id=invoice_requests.NO_RUN,
                sub=fresh, currency=first.currency, period_start=first.period_start, period_end=first.period_end,
                lines=first.lines)
    await _run(service, tenant, now)
    rows = await admin_conn.fetch("select payload from outbox where tenant_id = $1 and stream = 'invoice_requests'",
                                  tid)
    emitted = {r["invoice_request_id"]: r for r in (codec.decode(codec.Schema.INVOICE_REQUEST, x["payload"])
                                                     for x in rows)}
    assert len(shown) > N // 3
    for rid_, record in shown.items():
        got = emitted[rid_]
        for key in ("lines", "total", "currency", "period_start_us", "period_end_us", "subscription_id"):
            assert got[key] == record[key], (rid_, key)
    kinds = {ln["kind"] for record in shown.values() for ln in record["lines"]}
    assert {"base_fee", "usage", "late_usage", "proration_credit", "proration_charge"} <= kinds, kinds
    assert compared_changes > len(changed) // 4

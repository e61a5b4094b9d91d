"""Subscriptions: create, read, list, and every lifecycle change.

Each mutation is one transaction: idempotency key claimed, subscription locked, the pure
domain rule applied, the new state written, an audit row and an outbox event appended.
gRPC and the command consumer call these same functions.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Awaitable, Callable, Mapping

import asyncpg

from billing.domain import proration as pr
from billing.domain import subscriptions as rules
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.plans import PlanSpec
from billing.domain.subscriptions import CancelMode, Change, ChangeTiming, Subscription
from billing.services import (
    audit, change_billing, clock_time, events, history, idempotency, paging, period_close, plans, run_metrics,
)
from billing.services.clock_time import SubscriptionTime
from billing.services.subscription_snapshots import from_snapshot, snapshot
from billing.services.context import Caller
from billing.services.previews import ChangePreview, Rollback
from billing.services.errors import AlreadyExists, FailedPrecondition, NotFound, ValidationError, Violations
from billing.store import audit as audit_store
from billing.store import plans as plans_store
from billing.store import subscription_reads as reads_store
from billing.store import subscriptions as store
from billing.store import test_clocks as clocks_store
from billing.store import usage as usage_store
from billing.domain.events import EventType
from billing.services import entitlements


_log = logging.getLogger(__name__)

PRORATION_BEHAVIORS = ("", "next_invoice", "invoice_now", "none")


def _check_proration(value: str, field: str) -> str:
    if value not in PRORATION_BEHAVIORS:
        raise ValidationError(field, f"unknown proration behavior {value!r}")
    return value


def now() -> datetime:
    """The wall clock. A subscription's own "now" is `clock_time.for_subscription`."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class SubscriptionView:
    subscription: Subscription
    plan_code: str
    pending_plan_code: str | None
    history: tuple[dict, ...] = ()
    test_clock_id: uuid.UUID | None = None  # the test clock it lives on (None: real time)


@dataclass(frozen=True)
class SubscriptionPage:
    subscriptions: list[SubscriptionView]
    next_page_token: str


# -- idempotent outcomes (snapshots: services/subscription_snapshots.py) ---------------

def _outcome(view: SubscriptionView) -> dict:
    return {"subscription": snapshot(view.subscription), "plan_code": view.plan_code,
            "pending_plan_code": view.pending_plan_code,
            "test_clock_id": str(view.test_clock_id) if view.test_clock_id else None}


def _from_outcome(d: Mapping) -> SubscriptionView:
    clock = d.get("test_clock_id")
    return SubscriptionView(from_snapshot(d["subscription"]), d["plan_code"], d["pending_plan_code"],
                            test_clock_id=uuid.UUID(clock) if clock else None)


# -- helpers ----------------------------------------------------------------------------

async def load_plan(conn: asyncpg.Connection, caller: Caller, plan_id: uuid.UUID, field: str) -> tuple[PlanSpec, str, bool]:
    plan = await plans.load(conn, caller.tenant_id, plan_id)
    if plan is None:
        raise NotFound("plan", str(plan_id)) if field == "plan_id" else ValidationError(field, "no such plan")
    return plan.spec, plan.spec.code, plan.status == "active"


async def _view(conn: asyncpg.Connection, caller: Caller, sub: Subscription) -> SubscriptionView:
    # The plans' codes in one query, without parsing their specs (GetSubscription's latency).
    return (await _views(conn, caller, [sub]))[0]


async def _views(conn: asyncpg.Connection, caller: Caller, subs: list[Subscription]) -> list[SubscriptionView]:
    """`_view` for a page: the plans' codes in one query, not one per subscription."""
    ids = {s.plan_id for s in subs} | {s.pending_plan_id for s in subs if s.pending_plan_id}
    codes = await plans_store.codes(conn, caller.tenant_id, list(ids)) if ids else {}
    missing = ids - codes.keys()
    if missing:
        raise NotFound("plan", str(next(iter(missing))))
    clocks = await clocks_store.clocks_of(conn, caller.tenant_id, [s.id for s in subs])
    return [SubscriptionView(s, codes[s.plan_id], codes[s.pending_plan_id] if s.pending_plan_id else None,
                             test_clock_id=clocks.get(s.id)) for s in subs]


def _view_of_row(row: asyncpg.Record) -> SubscriptionView:
    """A row of store/subscription_reads: what `_view` reads in three queries, in one."""
    sub = store.from_row(row)
    if row["plan_code"] is None or (sub.pending_plan_id and row["pending_plan_code"] is None):
        raise NotFound("plan", str(sub.plan_id if row["plan_code"] is None else sub.pending_plan_id))
    return SubscriptionView(sub, row["plan_code"], row["pending_plan_code"], test_clock_id=row["test_clock_id"])


async def record_change(conn: asyncpg.Connection, caller: Caller, request_id: str, before: Subscription | None,
                  change: Change, occurred_at: datetime | None = None) -> None:
    """Audit row and event for an applied change (nothing for a no-op)."""
    after = change.subscription
    details = dict(change.details)
    await audit.record_change(
        conn, caller, entity_type="subscription", entity_id=after.id, action=change.event,
        before=snapshot(before) if before else None, after={**snapshot(after), "details": details},
        request_id=request_id,
    )
    await events.emit(
        conn, caller, event_type=change.event, subscription_id=str(after.id), customer_id=after.customer_id,
        occurred_at=occurred_at or now(), cause=request_id, from_status=before.status.value if before else None,
        to_status=after.status.value, data=details,
    )
    await entitlements.emit_if_changed(conn, caller, request_id, before, after, change.event,
                                       occurred_at or now())


# -- use cases --------------------------------------------------------------------------

async def create_subscription(db, caller: Caller, request_id: str, *, customer_id: str, plan_id: str,
                              start_at: datetime | None, billing_anchor: datetime | None, trial_days: int | None,
                              activate: bool, metadata: Mapping[str, str],
                              subscription_id: str = "", time_zone: str = "", test_clock_id: str = "") -> SubscriptionView:
    """`subscription_id` lets a command producer choose the id up front (so it can key later
    commands by it); gRPC leaves it empty and the service assigns one. `test_clock_id`: the
    subscription lives on that test clock (created at its time; its start may be anywhere)."""
    # Every violation of the request at once, before anything is read.
    v = Violations()
    v.check(idempotency.check_key, request_id)
    plan_uuid = v.check(paging.parse_uuid, plan_id, "plan_id")
    new_id = v.check(paging.parse_uuid, subscription_id, "subscription_id") if subscription_id else uuid.uuid4()
    clock_uuid = v.check(paging.parse_uuid, test_clock_id, "test_clock_id") if test_clock_id else None
    window = None if test_clock_id else rules.START_WINDOW
    rules.check_create(v, customer_id=customer_id, now=now(), start_at=start_at, trial_days=trial_days,
                       metadata=metadata, time_zone=time_zone, start_window=window)
    v.raise_if_any()
    zone = time_zone or "UTC"
    assert plan_uuid is not None and new_id is not None
    payload = {"id": subscription_id, "customer_id": customer_id, "plan_id": str(plan_uuid), "start_at": start_at, "anchor": billing_anchor,
               "trial_days": trial_days, "activate": activate, "metadata": dict(metadata)}
    if zone != "UTC":  # only then: the payload of a UTC request stays what it always was
        payload["time_zone"] = zone
    if clock_uuid:
        payload["test_clock_id"] = str(clock_uuid)
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "CreateSubscription", payload)
        if replay is not None:
            return _from_outcome(replay)
        spec, code, active = await load_plan(conn, caller, plan_uuid, "plan_id")
        if not active:
            raise FailedPrecondition(f"plan {code!r} is archived and takes no new subscriptions",
                                     reason="PLAN_ARCHIVED")
        t = await clock_time.for_new_subscription(conn, caller.tenant_id, clock_uuid) if clock_uuid \
            else clock_time.real_time()
        at = t.now
        if subscription_id and await store.get(conn, caller.tenant_id, new_id) is not None:
            raise AlreadyExists(f"subscription {subscription_id!r} already exists", reason="SUBSCRIPTION_EXISTS")
        change = rules.create(subscription_id=new_id, customer_id=customer_id, plan_id=plan_uuid, plan=spec,
                              now=at, start_at=start_at, billing_anchor=billing_anchor, trial_days=trial_days,
                              metadata=metadata, time_zone=zone, start_window=window)
        sub = change.subscription
        await store.insert(conn, caller.tenant_id, sub, clock_uuid)
        await record_change(conn, caller, request_id, None, change, occurred_at=t.issued_at)
        if activate:
            activated = rules.activate(sub, spec, sub.start_at)
            await store.update(conn, caller.tenant_id, activated.subscription)
            await record_change(conn, caller, request_id, sub, activated, occurred_at=t.issued_at)
            sub = activated.subscription
        view = SubscriptionView(sub, code, None, test_clock_id=clock_uuid)
        await idempotency.remember(conn, caller, request_id, _outcome(view))
        return view


# A lifecycle rule: the change of a locked subscription at its time (`SubscriptionTime.now`).
Rule = Callable[[asyncpg.Connection, Subscription, PlanSpec, SubscriptionTime], Awaitable[Change]]


async def _mutate(db, caller: Caller, request_id: str, subscription_id: str, operation: str, payload: dict,
                  rule: Rule, preview: ChangePreview | None = None, at: datetime | None = None) -> SubscriptionView:
    """`preview`: the change's own code runs and is rolled back (billing/services/previews.py);
    `at`: the time it happens (default now)."""
    if preview is None:
        idempotency.check_key(request_id)
    sub_uuid = paging.parse_uuid(subscription_id, "id")
    try:
        return await _mutate_in_tx(db, caller, request_id, sub_uuid, subscription_id, operation, payload, rule,
                                   preview, at)
    except Rollback as previewed:
        return previewed.outcome


async def _mutate_in_tx(db, caller: Caller, request_id: str, sub_uuid: uuid.UUID, subscription_id: str,
                        operation: str, payload: dict, rule: Rule, preview: ChangePreview | None,
                        at: datetime | None) -> SubscriptionView:
    async with db.tenant_tx(caller.tenant_id) as conn:
        if preview is None:
            replay = await idempotency.claim(conn, caller, request_id, operation, {"id": str(sub_uuid), **payload})
            if replay is not None:
                return _from_outcome(replay)
        before = await store.get(conn, caller.tenant_id, sub_uuid, for_update=True)
        if before is None:
            raise NotFound("subscription", subscription_id)
        t = await clock_time.for_subscription(conn, caller.tenant_id, sub_uuid)
        clock_time.refuse_advancing(t.advancing, t.test_clock_id)
        # A period that ended and no run has closed yet is billed first, as a run would:
        # the change then applies to the period its time falls in (docs/billing.md).
        if at is not None:  # a preview at a chosen time (not on a test clock: its time is its own)
            t = replace(t, now=at)
        closed = await period_close.close_ended_periods(conn, caller, before, t.now, request_id, t.test_clock_id)
        if closed is not None:
            before = await store.get(conn, caller.tenant_id, sub_uuid, for_update=True)
            assert before is not None  # locked above
        spec, _, _ = await load_plan(conn, caller, before.plan_id, "plan_id")
        change = await rule(conn, before, spec, t)
        if change.event:
            await store.update(conn, caller.tenant_id, change.subscription)
            await record_change(conn, caller, request_id, before, change, occurred_at=t.issued_at)
        view = await _view(conn, caller, change.subscription)
        if preview is not None:
            raise Rollback(view)
        await idempotency.remember(conn, caller, request_id, _outcome(view))
    if closed is not None:
        run_metrics.observe_closed(closed)
    if "invoice_request_id" in change.details:  # change_billing.bill: an invoice request now
        run_metrics.observe_change_invoice(spec.currency, Decimal(change.details["invoice_total"]))
    return view


async def activate_subscription(db, caller: Caller, request_id: str, subscription_id: str) -> SubscriptionView:
    async def rule(conn, sub: Subscription, spec: PlanSpec, t: SubscriptionTime) -> Change:
        at = t.now
        return rules.activate(sub, spec, max(at, sub.start_at) if sub.status is SubscriptionStatus.PENDING else at)

    return await _mutate(db, caller, request_id, subscription_id, "ActivateSubscription", {}, rule)


async def pause_subscription(db, caller: Caller, request_id: str, subscription_id: str,
                             resumes_at: datetime | None, *, preview: ChangePreview | None = None,
                             at: datetime | None = None) -> SubscriptionView:
    async def rule(conn, sub: Subscription, spec: PlanSpec, t: SubscriptionTime) -> Change:
        at = t.now
        change = rules.pause(sub, at, resumes_at)
        settled = pr.on_pause(sub, spec, change.subscription, at,
                                     charged_in_advance=await change_billing.charged_in_advance(conn, caller, sub))
        return await change_billing.bill(conn, caller, f"pause:{request_id}", sub, spec, change, settled,
                                         pr.Behavior.NEXT_INVOICE, preview=preview, clock=t)

    return await _mutate(db, caller, request_id, subscription_id, "PauseSubscription",
                         {"resumes_at": resumes_at}, rule, preview, at)


async def settle_resume(conn: asyncpg.Connection, caller: Caller, request_id: str, sub: Subscription, spec: PlanSpec,
                   change: Change, at: datetime) -> Change:
    """A paused -> active change taking effect at `at`: the pause window [paused_at, at) is
    recorded (usage in it stays unbilled, even when it arrives later) and the period is
    reopened from `at` (`proration.on_resume`; time before the current period that a run
    closed as paused is charged on the next invoice)."""
    settled = pr.on_resume(sub, spec, change.subscription, at)
    if sub.paused_at is not None:
        await usage_store.add_pause_window(conn, caller.tenant_id, sub.id, sub.paused_at, max(at, sub.paused_at))
    return await change_billing.bill(conn, caller, f"resume:{request_id}", sub, spec, change, settled,
                                     pr.Behavior.NEXT_INVOICE)


async def resume_subscription(db, caller: Caller, request_id: str, subscription_id: str) -> SubscriptionView:
    async def rule(conn, sub: Subscription, spec: PlanSpec, t: SubscriptionTime) -> Change:
        at = t.now
        change = rules.resume(sub, at)
        if change.event != EventType.RESUMED:
            return change
        return await settle_resume(conn, caller, request_id, sub, spec, change, at)

    return await _mutate(db, caller, request_id, subscription_id, "ResumeSubscription", {}, rule)


async def cancel_subscription(db, caller: Caller, request_id: str, subscription_id: str, mode: str,
                              proration: str = "", *, preview: ChangePreview | None = None,
                              at: datetime | None = None) -> SubscriptionView:
    proration_value = _check_proration(proration, "proration")
    if not mode:
        raise ValidationError("mode", "is required: immediately or at_period_end")
    try:
        cancel_mode = CancelMode(mode)
    except ValueError:
        raise ValidationError("mode", f"must be immediately or at_period_end, got {mode!r}") from None

    async def rule(conn, sub: Subscription, spec: PlanSpec, t: SubscriptionTime) -> Change:
        at = t.now
        change = rules.cancel(sub, at, cancel_mode)
        if change.event != EventType.CANCELED:
            return change  # at period end: the last run bills the period, nothing is prorated
        behavior = pr.Behavior.parse(proration_value)
        settled = pr.on_cancel(sub, spec, change.subscription, at,
                                      charged_in_advance=await change_billing.charged_in_advance(conn, caller, sub),
                                      behavior=behavior)
        return await change_billing.bill(conn, caller, f"cancel:{request_id}", sub, spec, change, settled, behavior,
                                         final_at=at, preview=preview, clock=t)

    return await _mutate(db, caller, request_id, subscription_id, "CancelSubscription",
                         {"mode": cancel_mode.value, "proration": proration_value}, rule, preview, at)


async def change_plan(db, caller: Caller, request_id: str, subscription_id: str, new_plan_id: str, timing: str,
                      proration_behavior: str = "", *, preview: ChangePreview | None = None,
                      at: datetime | None = None) -> SubscriptionView:
    new_uuid = paging.parse_uuid(new_plan_id, "new_plan_id")
    _check_proration(proration_behavior, "proration_behavior")
    try:
        change_timing = ChangeTiming(timing or "default")
    except ValueError:
        raise ValidationError("timing", f"must be immediately or at_period_end, got {timing!r}") from None

    async def rule(conn, sub: Subscription, spec: PlanSpec, t: SubscriptionTime) -> Change:
        new_plan = await plans.load(conn, caller.tenant_id, new_uuid)
        if new_plan is None:
            raise NotFound("plan", new_plan_id)
        at = t.now
        new_spec = new_plan.spec
        change = rules.change_plan(sub, spec, new_uuid, new_spec, new_plan.status == "active", change_timing, at)
        if change.event != EventType.PLAN_CHANGED:
            return change  # scheduled for the period end (or withdrawn): nothing to prorate
        behavior = pr.Behavior.parse(proration_behavior)
        settled = pr.on_change(sub, spec, change.subscription, new_spec, at,
                                      charged_in_advance=await change_billing.charged_in_advance(conn, caller, sub),
                                      behavior=behavior)
        return await change_billing.bill(conn, caller, f"change_plan:{request_id}", sub, spec, change, settled,
                                         behavior, preview=preview, clock=t)

    return await _mutate(db, caller, request_id, subscription_id, "ChangePlan",
                         {"new_plan_id": str(new_uuid), "timing": change_timing.value,
                          "proration_behavior": proration_behavior}, rule, preview, at)


async def get_subscription(db, caller: Caller, subscription_id: str, include_history: bool) -> SubscriptionView:
    sub_uuid = paging.parse_uuid(subscription_id, "id")
    if not include_history and hasattr(db, "tenant_statement"):  # one statement (store/subscription_reads.py)
        async with db.tenant_statement(caller.tenant_id) as (conn, entry):
            row = await reads_store.subscription(conn, caller.tenant_id, entry.key_hashes, entry.token, sub_uuid)
        if row is None:
            raise NotFound("subscription", subscription_id)
        return _view_of_row(row)
    async with db.tenant_tx(caller.tenant_id) as conn:
        sub = await store.get(conn, caller.tenant_id, sub_uuid)
        if sub is None:
            raise NotFound("subscription", subscription_id)
        view = await _view(conn, caller, sub)
        if include_history:
            rows = await audit_store.history(conn, caller.tenant_id, "subscription", sub_uuid)
            view = replace(view, history=tuple(history.entry(r) for r in rows))
    return view


async def list_subscriptions(db, caller: Caller, *, tokens: paging.PageTokens, page_size: int, page_token: str,
                             status: str, customer_id: str, plan_id: str) -> SubscriptionPage:
    limit = paging.page_size(page_size)
    plan_uuid = paging.parse_uuid(plan_id, "plan_id") if plan_id else None
    customer_id = paging.filter_text(customer_id, "customer_id")
    if status and status not in SubscriptionStatus.__members__.values():
        raise ValidationError("status", f"unknown status {status!r}")
    filters = {"status": status, "customer_id": customer_id, "plan_id": str(plan_uuid or "")}
    after = tokens.decode(page_token, "ListSubscriptions", caller.tenant_id, filters)
    async with db.tenant_statement(caller.tenant_id) as (conn, entry):
        rows = await reads_store.subscription_page(conn, caller.tenant_id, entry.key_hashes, entry.token,
                                                   status=status or None, customer_id=customer_id or None,
                                                   plan_id=plan_uuid, after=after, limit=limit + 1)
    views = [_view_of_row(r) for r in rows[:limit]]
    token = tokens.encode("ListSubscriptions", caller.tenant_id, filters, rows[limit - 1]["created_at"],
                          rows[limit - 1]["id"]) if len(rows) > limit else ""
    return SubscriptionPage(views, token)

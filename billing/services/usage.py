"""Usage ingestion: one function for a batch of events, used by the Kafka consumer and by
RecordUsage alike, so both paths deduplicate against each other by event id.

Per tenant in the batch, one round trip does everything: the raw events are inserted
(`ON CONFLICT DO NOTHING` on (tenant, event id) drops duplicates, also within the batch)
and the rows actually inserted are folded into the per-period totals, in ONE statement.
Python only validates and attributes each event to its billing period; times stay integer
microseconds and quantities stay text until PostgreSQL casts them, because converting a
million values to `datetime` and `Decimal` costs more than the database work.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg

from billing.domain.periods import from_us, to_us
from billing.domain.plans import PlanSpec
from billing.domain.usage_rules import UsageSubscription, period_at, refusal
from billing.services.plans import PlanCache
from billing.store import usage as usage_store
from billing.store.db import set_tenant

# A non-negative exact decimal: up to 15 digits before the point and 12 after. ASCII digits
# only: without re.ASCII, \d also matches "１２" (full-width) or "١٢" (Arabic-Indic), which
# PostgreSQL's numeric refuses, failing the whole batch instead of the one event.
_QUANTITY = re.compile(r"\d{1,15}(?:\.\d{1,12})?", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
MAX_EVENT_ID = 200
MAX_PROPERTIES = 50
# An event property is a label (a user id, a region), stored with every raw event: a
# megabyte of it is a producer bug, refused like NUL rather than kept forever.
MAX_PROPERTY_KEY = 100
MAX_PROPERTY_VALUE = 1000


_REFUSAL_DETAIL = {
    "subscription_not_started": "subscription {sub_id} is {status}",
    "subscription_canceled": "subscription {sub_id} was canceled before the event",
    "subscription_paused": "subscription {sub_id} was paused when the event happened",
}


@dataclass(frozen=True)
class UsageLimits:
    # Events further in the future than this are a producer's clock gone wrong.
    max_future_skew_us: int = 5 * 60 * 1_000_000
    # Events older than this are too late to bill (and would reopen closed books).
    max_age_us: int = 35 * 24 * 3600 * 1_000_000


@dataclass(slots=True)
class UsageEvent:
    event_id: str
    tenant_id: str
    subscription_id: str
    metric_code: str
    quantity: str
    occurred_at_us: int
    properties: dict | None = None


@dataclass(slots=True)
class Rejection:
    index: int  # position in the input list
    reason: str  # machine-readable: unknown_tenant, unknown_subscription, ...
    detail: str


@dataclass
class IngestResult:
    received: int = 0
    inserted: int = 0
    late: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    # Per accepted input index: (period_start_us, period_end_us), for RecordUsage's answer.
    periods: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.received - len(self.rejected) - self.inserted


def _properties_ok(properties: dict) -> bool:
    return len(properties) <= MAX_PROPERTIES and not any(
        k.__class__ is not str or v.__class__ is not str or "\x00" in k or "\x00" in v
        or len(k) > MAX_PROPERTY_KEY or len(v) > MAX_PROPERTY_VALUE for k, v in properties.items())


def check_quantity(text: str) -> str | None:
    """None when fine, else the rejection reason."""
    if _QUANTITY.fullmatch(text):
        return None
    if _NUMBER.fullmatch(text):
        return "negative_quantity" if text.startswith("-") and text.strip("-0.") else "invalid_quantity"
    return "invalid_quantity"


async def ingest(conn: asyncpg.Connection, events: list[UsageEvent], *, now_us: int, limits: UsageLimits,
                 plans: PlanCache) -> IngestResult:
    """Validate, attribute and store a batch; `conn` is inside a transaction the caller owns.

    Sets the tenant on the connection for each tenant group in turn (transaction-local), so
    row-level security applies to every statement.
    """
    result = IngestResult(received=len(events))
    by_tenant: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        by_tenant.setdefault(e.tenant_id, []).append(i)
    for tenant_text, indexes in by_tenant.items():
        try:
            tenant = uuid.UUID(tenant_text)
        except ValueError:
            result.rejected += [Rejection(i, "unknown_tenant", f"tenant_id {tenant_text[:64]!r} is not a UUID")
                                for i in indexes]
            continue
        await set_tenant(conn, tenant)
        if not await usage_store.tenant_exists(conn, tenant):
            result.rejected += [Rejection(i, "unknown_tenant", f"no tenant {tenant}") for i in indexes]
            continue
        await _ingest_tenant(conn, tenant, events, indexes, now_us, limits, plans, result)
    return result


async def _ingest_tenant(conn, tenant: uuid.UUID, events: list[UsageEvent], indexes: list[int], now_us: int,
                         limits: UsageLimits, plans: PlanCache, result: IngestResult) -> None:
    sub_ids: dict[str, uuid.UUID | None] = {}
    for i in indexes:
        text = events[i].subscription_id
        if text not in sub_ids:
            try:
                sub_ids[text] = uuid.UUID(text)
            except ValueError:
                sub_ids[text] = None
    subs: dict[uuid.UUID, UsageSubscription] = {}
    # A test clock's subscription takes usage by its clock's time (docs/time.md, "Test clocks").
    clock_now: dict[uuid.UUID, int] = {}
    # Read FOR KEY SHARE, held until the batch commits (billing/store/usage.py, `subscriptions`).
    for row in await usage_store.subscriptions(conn, tenant, [s for s in sub_ids.values() if s]):
        subs[row["id"]] = UsageSubscription(
            row["plan_id"], row["status"], to_us(row["start_at"]), row["billing_anchor"],
            to_us(row["current_period_start"]) if row["current_period_start"] else None,
            to_us(row["current_period_end"]) if row["current_period_end"] else None,
            to_us(row["canceled_at"]) if row["canceled_at"] else None,
            to_us(row["paused_at"]) if row["paused_at"] else None,
            tuple(zip(map(to_us, row["paused_from"]), map(to_us, row["paused_to"]))),
            to_us(row["pause_resumes_at"]) if row["pause_resumes_at"] else None,
        )
        if row["clock_now"] is not None:
            clock_now[row["id"]] = to_us(row["clock_now"])
    await plans.load(conn, tenant, {s.plan_id for s in subs.values()})

    # Per subscription text, once: (uuid, state, metric codes and spec of its plan, its now) or None.
    known: dict[str, tuple[uuid.UUID, UsageSubscription, frozenset[str], PlanSpec, int] | None] = {}
    for text, sub_id in sub_ids.items():
        sub = subs.get(sub_id) if sub_id else None
        known[text] = (sub_id, sub, plans.metric_codes(tenant, sub.plan_id), plans.spec(tenant, sub.plan_id),
                       clock_now.get(sub_id, now_us)) if sub_id and sub else None
    rows = usage_store.Batch()
    add = rows.add
    periods = result.periods
    reject = result.rejected.append
    quantity_ok = _QUANTITY.fullmatch
    for i in indexes:
        e = events[i]
        entry = known[e.subscription_id]
        if entry is None:
            reject(Rejection(i, "unknown_subscription", f"no subscription {e.subscription_id[:64]!r}"))
            continue
        sub_id, sub, metrics, spec, sub_now = entry
        t = e.occurred_at_us
        refused = refusal(sub, t)
        if refused is not None:
            reject(Rejection(i, refused, _REFUSAL_DETAIL[refused].format(sub_id=sub_id, status=sub.status)))
        elif e.metric_code not in metrics:
            reject(Rejection(i, "unknown_metric", f"metric {e.metric_code[:64]!r} is not on the subscription's plan"))
        elif not quantity_ok(e.quantity):
            reject(Rejection(i, check_quantity(e.quantity) or "invalid_quantity", f"quantity {e.quantity[:40]!r} is not a non-negative decimal"))
        elif t > sub_now + limits.max_future_skew_us:
            reject(Rejection(i, "too_far_in_future", f"occurred_at is {(t - sub_now) // 1_000_000} s ahead of "
                                                     f"{'its test clock' if sub_id in clock_now else 'now'}"))
        elif t < sub_now - limits.max_age_us:
            reject(Rejection(i, "too_old", f"occurred_at is older than {limits.max_age_us // 86_400_000_000} days"))
        elif t < sub.start_us:
            reject(Rejection(i, "before_subscription_start", "occurred_at is before the subscription started"))
        elif not e.event_id or len(e.event_id) > MAX_EVENT_ID or "\x00" in e.event_id:
            reject(Rejection(i, "invalid_event_id", f"event_id must be 1..{MAX_EVENT_ID} characters, no NUL"))
        elif e.properties and not _properties_ok(e.properties):
            reject(Rejection(i, "invalid_properties",
                             f"properties: at most {MAX_PROPERTIES}, keys up to {MAX_PROPERTY_KEY} and values up to "
                             f"{MAX_PROPERTY_VALUE} characters, without NUL (PostgreSQL refuses NUL)"))
        else:
            start, end, late = sub.attribute(spec, t)
            add(e, sub_id, start, end, late)
            periods[i] = (start, end)
    if rows:
        inserted, late_inserted = await usage_store.insert_batch(conn, tenant, rows)
        result.inserted += inserted
        result.late += late_inserted


# -- gRPC: RecordUsage and GetUsage ------------------------------------------------------

# How each rejection reason answers over gRPC: (status kind, field it names).
_REJECTION_STATUS = {
    "unknown_tenant": ("not_found", "tenant"),
    "unknown_subscription": ("not_found", "subscription_id"),
    "subscription_not_started": ("precondition", "subscription_id"),
    "subscription_canceled": ("precondition", "subscription_id"),
    "subscription_paused": ("precondition", "subscription_id"),
    "before_subscription_start": ("precondition", "occurred_at"),
    "unknown_metric": ("invalid", "metric_code"),
    "invalid_quantity": ("invalid", "quantity"),
    "negative_quantity": ("invalid", "quantity"),
    "too_far_in_future": ("invalid", "occurred_at"),
    "too_old": ("invalid", "occurred_at"),
    "invalid_event_id": ("invalid", "event_id"),
    "invalid_properties": ("invalid", "properties"),
}
# Every reason an event can be rejected for (the usage consumer's dead-letter reasons).
REJECTION_REASONS = tuple(_REJECTION_STATUS)


@dataclass(frozen=True)
class Recorded:
    event_id: str
    duplicate: bool
    period_start: datetime
    period_end: datetime


class Usage:
    """The usage use cases, holding what outlives a call: the limits and the plan cache,
    both built once from the settings (billing/bootstrap.py) and shared with the consumer."""

    def __init__(self, limits: UsageLimits, plans: PlanCache):
        self.limits = limits
        self.plans = plans

    async def record(self, db, caller, *, request_id: str, event_id: str, subscription_id: str, metric_code: str,
                     quantity: str, occurred_at: datetime | None, properties: dict[str, str]) -> Recorded:
        """Durable when it returns; deduplicated with the Kafka path by event id. A replay of
        `request_id` answers exactly as the first call did (its `duplicate` included)."""
        from billing.services import idempotency
        from billing.services.errors import FailedPrecondition, NotFound, ValidationError

        idempotency.check_key(request_id)
        event_id = event_id or request_id
        if occurred_at is None:
            raise ValidationError("occurred_at", "is required: when the usage happened")
        if len(properties) > MAX_PROPERTIES:
            raise ValidationError("properties", f"at most {MAX_PROPERTIES} properties")
        now_us = to_us(datetime.now(timezone.utc))
        event = UsageEvent(event_id, str(caller.tenant_id), subscription_id, metric_code, quantity,
                           to_us(occurred_at), dict(properties) or None)
        payload = {"event_id": event_id, "subscription_id": subscription_id, "metric_code": metric_code,
                   "quantity": quantity, "occurred_at": occurred_at.isoformat(), "properties": properties}
        async with db.tenant_tx(caller.tenant_id) as conn:
            replay = await idempotency.claim(conn, caller, request_id, "RecordUsage", payload)
            if replay is not None:
                return Recorded(replay["event_id"], replay["duplicate"], datetime.fromisoformat(replay["period_start"]),
                                datetime.fromisoformat(replay["period_end"]))
            result = await ingest(conn, [event], now_us=now_us, limits=self.limits, plans=self.plans)
            if result.rejected:  # raised inside the transaction: the request_id is not kept
                r = result.rejected[0]
                kind, field_name = _REJECTION_STATUS.get(r.reason, ("invalid", r.reason))
                if kind == "not_found":
                    raise NotFound("subscription", subscription_id)
                if kind == "precondition":
                    raise FailedPrecondition(f"{r.reason}: {r.detail}", reason=r.reason.upper())
                raise ValidationError(field_name, r.detail)
            start, end = result.periods[0]
            recorded = Recorded(event_id, result.inserted == 0, from_us(start), from_us(end))
            await idempotency.remember(conn, caller, request_id, {
                "event_id": event_id, "duplicate": recorded.duplicate,
                "period_start": recorded.period_start.isoformat(), "period_end": recorded.period_end.isoformat()})
        return recorded

    async def get(self, db, caller, *, subscription_id: str, period_start: datetime | None,
                  series: str) -> "UsageReport":
        """Totals per metric of the plan for a period (default: the current one), each with
        the amount it would be billed at now (a preview), and optionally a series."""
        from billing.domain.money import round_money
        from billing.domain.pricing import price_usage
        from billing.domain.pricing import total as pricing_total
        from billing.services import paging, period_reads
        from billing.services.errors import FailedPrecondition, NotFound, ValidationError
        from billing.store import subscriptions as subs_store

        sub_uuid = paging.parse_uuid(subscription_id, "subscription_id")
        if series not in ("", "hour", "day"):
            raise ValidationError("series", f"unknown granularity {series!r}")
        async with db.tenant_tx(caller.tenant_id) as conn:
            sub = await subs_store.get(conn, caller.tenant_id, sub_uuid)
            if sub is None:
                raise NotFound("subscription", subscription_id)
            await self.plans.load(conn, caller.tenant_id, {sub.plan_id})
            spec = self.plans.spec(caller.tenant_id, sub.plan_id)
            if period_start is None:
                if sub.current_period_start is None:
                    raise FailedPrecondition(f"subscription {subscription_id} has not started (it is {sub.status})",
                                             reason="SUBSCRIPTION_NOT_STARTED")
                start, end = sub.current_period_start, sub.current_period_end
            else:
                start, end = period_start, _period_end_at(sub, spec, period_start)
            usage, stored_end = await period_reads.usage_of_period(conn, caller.tenant_id, sub_uuid, spec, start)
            # A start the periods as drawn now do not have may still be one usage was stored
            # under (a period reopened by a resume); anything else names no period at all.
            end = end or stored_end
            if end is None:
                raise ValidationError("period_start", f"{start.isoformat()} is not the start of a billing "
                                      f"period of subscription {subscription_id} (unset: the current period)")
            late = {r["metric_code"]: r for r in await usage_store.late_usage(conn, caller.tenant_id, sub_uuid, start)}
            metrics = []
            # Priced as the period's close prices it: the amount is the sum of its rounded lines.
            for priced in price_usage(spec, usage, start, end):
                code = priced.charge.metric_code
                points = []
                if series:
                    points = [(p["at"], p["quantity"]) for p in await usage_store.series(
                        conn, caller.tenant_id, sub_uuid, code, start, series)]
                lr = late.get(code)
                metrics.append(MetricUsage(
                    code, priced.charge.aggregation.value, priced.quantity, pricing_total(priced.lines), points,
                    LateUsageReport(lr["event_count"], lr["quantity_sum"], lr["billed_count"]) if lr else NO_LATE_USAGE))
        total = round_money(sum((m.amount for m in metrics), start=Decimal(0)), spec.currency)
        return UsageReport(sub_uuid, start, end, spec.currency, metrics, total)


def _period_end_at(sub, spec: PlanSpec, start: datetime) -> datetime | None:
    """The end of the subscription's period starting at `start`; None if none starts there."""
    state = UsageSubscription(
        sub.plan_id, sub.status.value, to_us(sub.start_at) if sub.start_at else 0, sub.billing_anchor,
        to_us(sub.current_period_start) if sub.current_period_start else None,
        to_us(sub.current_period_end) if sub.current_period_end else None,
        to_us(sub.canceled_at) if sub.canceled_at else None)
    found = period_at(state, spec, to_us(start)) if sub.start_at else None
    return from_us(found[1]) if found else None


@dataclass(frozen=True)
class LateUsageReport:
    """Events of a period stored after the period was billed (docs/billing.md, late usage)."""
    event_count: int
    quantity_sum: Decimal
    billed_event_count: int  # billed already as a late line; the rest by the next run


NO_LATE_USAGE = LateUsageReport(0, Decimal(0), 0)


@dataclass(frozen=True)
class MetricUsage:
    metric_code: str
    aggregation: str
    quantity: Decimal
    amount: Decimal  # rounded
    series: list[tuple[datetime, Decimal]]
    late: LateUsageReport = NO_LATE_USAGE


@dataclass(frozen=True)
class UsageReport:
    subscription_id: uuid.UUID
    period_start: datetime
    period_end: datetime
    currency: str
    metrics: list[MetricUsage]
    total: Decimal

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
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing.domain.invoice_assembly import usage_charge_lines
from billing.domain.periods import from_us, to_us
from billing.domain.plans import PlanSpec
from billing.domain.usage_rules import EventChecks, UsageSubscription, event_checks, period_at, refusal
from billing.services import usage_alerts
from billing.services.plans import PlanCache
from billing.store import usage as usage_store
from billing.store.db import set_tenant

# A non-negative exact decimal: up to 15 digits before the point and 12 after. ASCII digits
# only: without re.ASCII, \d also matches "１２" (full-width) or "١٢" (Arabic-Indic), which
# PostgreSQL's numeric refuses, failing the whole batch instead of the one event.
_QUANTITY = re.compile(r"\d{1,15}(?:\.\d{1,12})?", re.ASCII)
# The same, negative allowed: a correction of a sum charge that takes them, a weighted_sum
# change; and an event's price for a dynamic charge (non-negative, as a quantity).
_SIGNED_QUANTITY = re.compile(r"-?\d{1,15}(?:\.\d{1,12})?", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
MAX_EVENT_ID = 200
# Per subscription: uuid, state, metric codes, plan, checks, its now, earliest and latest event time.
_Known = tuple[uuid.UUID, UsageSubscription, frozenset[str], PlanSpec, EventChecks, int, int, int]
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
    # Accepted events not stored yet, per tenant (`prepare` fills it, `store` empties it).
    pending: dict[uuid.UUID, usage_store.Batch] = field(default_factory=dict)
    # With `store(..., want_ids=True)`: the event ids this call inserted (not duplicates).
    inserted_ids: set[str] = field(default_factory=set)

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
    result = await prepare(conn, events, now_us=now_us, limits=limits, plans=plans)
    await store(conn, result)
    return result


async def store(conn: asyncpg.Connection, result: IngestResult, *, drop: frozenset[int] = frozenset(),
                want_ids: bool = False) -> None:
    """Store what `prepare` accepted, except the input indexes in `drop` (no longer wanted:
    they count as neither inserted nor rejected)."""
    for tenant, rows in result.pending.items():
        if drop:
            rows.keep(lambda i: i not in drop)
        if rows:
            await set_tenant(conn, tenant)
            inserted, late_inserted, ids = await usage_store.insert_batch(conn, tenant, rows, want_ids=want_ids)
            if inserted:  # nothing folded, nothing crossed (docs/alerts.md)
                await usage_alerts.after_batch(conn, tenant, rows.rows)
            result.inserted += inserted
            result.late += late_inserted
            result.inserted_ids.update(ids)
    result.pending.clear()


async def prepare(conn: asyncpg.Connection, events: list[UsageEvent], *, now_us: int, limits: UsageLimits,
                  plans: PlanCache) -> IngestResult:
    """Validate and attribute a batch without storing it: the rejections, the periods, and
    the accepted rows in `pending` (their subscriptions stay locked FOR KEY SHARE)."""
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
            to_us(row["pause_resumes_at"]) if row["pause_resumes_at"] else None, zone=row["time_zone"],
        )
        if row["clock_now"] is not None:
            clock_now[row["id"]] = to_us(row["clock_now"])
    await plans.load(conn, tenant, {s.plan_id for s in subs.values()})

    known: dict[str, _Known | None] = {}  # per subscription text, once (None: unknown)
    checks: dict[uuid.UUID, EventChecks] = {}  # per plan
    for text, sub_id in sub_ids.items():
        sub = subs.get(sub_id) if sub_id else None
        if sub_id and sub:
            spec = plans.spec(tenant, sub.plan_id)
            rules = checks.get(sub.plan_id) or checks.setdefault(sub.plan_id, event_checks(spec))
            sub_now = clock_now.get(sub_id, now_us)
            known[text] = (sub_id, sub, plans.metric_codes(tenant, sub.plan_id), spec, rules, sub_now,
                           sub_now - limits.max_age_us, sub_now + limits.max_future_skew_us)
        else:
            known[text] = None
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
        sub_id, sub, metrics, spec, rules, sub_now, earliest, latest = entry
        t = e.occurred_at_us
        refused = refusal(sub, t)
        if refused is not None:
            reject(Rejection(i, refused, _REFUSAL_DETAIL[refused].format(sub_id=sub_id, status=sub.status)))
        elif e.metric_code not in metrics:
            reject(Rejection(i, "unknown_metric", f"metric {e.metric_code[:64]!r} is not on the subscription's plan"))
        elif not quantity_ok(e.quantity) and not (e.metric_code in rules.negative_ok
                                                   and _SIGNED_QUANTITY.fullmatch(e.quantity)):
            reject(Rejection(i, check_quantity(e.quantity) or "invalid_quantity", f"quantity {e.quantity[:40]!r} is not a non-negative decimal"))
        elif t > latest:
            reject(Rejection(i, "too_far_in_future", f"occurred_at is {(t - sub_now) // 1_000_000} s ahead of "
                                                     f"{'its test clock' if sub_id in clock_now else 'now'}"))
        elif t < earliest:
            reject(Rejection(i, "too_old", f"occurred_at is older than {limits.max_age_us // 86_400_000_000} days"))
        elif t < sub.start_us:
            reject(Rejection(i, "before_subscription_start", "occurred_at is before the subscription started"))
        elif not e.event_id or len(e.event_id) > MAX_EVENT_ID or "\x00" in e.event_id:
            reject(Rejection(i, "invalid_event_id", f"event_id must be 1..{MAX_EVENT_ID} characters, no NUL"))
        elif e.properties and not _properties_ok(e.properties):
            reject(Rejection(i, "invalid_properties",
                             f"properties: at most {MAX_PROPERTIES}, keys up to {MAX_PROPERTY_KEY} and values up to "
                             f"{MAX_PROPERTY_VALUE} characters, without NUL (PostgreSQL refuses NUL)"))
        elif rules.amount_property and e.metric_code in rules.amount_property and not quantity_ok(
                (e.properties or {}).get(rules.amount_property[e.metric_code], "")):
            reject(Rejection(i, "invalid_amount", f"properties[{rules.amount_property[e.metric_code]!r}] must hold "
                             "the event's price, a non-negative decimal (dynamic pricing)"))
        else:
            start, end, late = sub.attribute(spec, t)
            add(i, e, sub_id, start, end, late)
            periods[i] = (start, end)
    if rows:
        result.pending[tenant] = rows


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
    "invalid_amount": ("invalid", "properties"),
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

    def __init__(self, limits: UsageLimits, plans: PlanCache, group=None):
        self.limits = limits
        self.plans = plans
        self.group = group  # a usage_record.GroupCommit, or None: one transaction per call

    async def record(self, db, caller, *, request_id: str, event_id: str, subscription_id: str, metric_code: str,
                     quantity: str, occurred_at: datetime | None, properties: dict[str, str]) -> Recorded:
        """Durable when it returns; deduplicated with the Kafka path by event id. A replay of
        `request_id` answers exactly as the first call did (its `duplicate` included).
        Concurrent calls share a transaction (group commit, `usage_record.GroupCommit`) when
        `group` is set."""
        from billing.services import usage_record

        call = usage_record.new_call(caller, request_id=request_id, event_id=event_id,
                                     subscription_id=subscription_id, metric_code=metric_code, quantity=quantity,
                                     occurred_at=occurred_at, properties=properties)
        if self.group is not None:
            return await self.group.submit(db, call)
        return await usage_record.record_one(self, db, call)

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
                    code, priced.charge.aggregation.value, priced.quantity,
                    pricing_total(usage_charge_lines([priced], spec.currency, start, end)), points,
                    LateUsageReport(lr["event_count"], lr["quantity_sum"], lr["billed_count"]) if lr else NO_LATE_USAGE))
        total = round_money(sum((m.amount for m in metrics), start=Decimal(0)), spec.currency)
        return UsageReport(sub_uuid, start, end, spec.currency, metrics, total)


def _period_end_at(sub, spec: PlanSpec, start: datetime) -> datetime | None:
    """The end of the subscription's period starting at `start`; None if none starts there."""
    state = UsageSubscription(
        sub.plan_id, sub.status.value, to_us(sub.start_at) if sub.start_at else 0, sub.billing_anchor,
        to_us(sub.current_period_start) if sub.current_period_start else None,
        to_us(sub.current_period_end) if sub.current_period_end else None,
        to_us(sub.canceled_at) if sub.canceled_at else None, zone=sub.time_zone)
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

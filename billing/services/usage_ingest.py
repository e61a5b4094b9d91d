"""Usage ingestion: one function for a batch of events, used by the Kafka consumer and by
RecordUsage alike, so both paths deduplicate against each other by event id.

Per tenant in the batch, one round trip does everything: the raw events are inserted
(`ON CONFLICT DO NOTHING` on (tenant, event id) drops duplicates, also within the batch)
and the rows actually inserted are folded into the per-period totals, in ONE statement.
Python only validates and attributes each event to its billing period; times stay integer
microseconds and quantities stay text until PostgreSQL casts them, because converting a
million values to `datetime` and `Decimal` costs more than the database work.

Most events of a batch are alike: a subscription in its current period, with no pause or
cancel, an ordinary metric and quantity, no properties. Those take a short path (a window
and a metric set per subscription, a cache of quantities per batch, computed once per
batch) that accepts exactly what the full chain of checks would; anything else, or any
doubt, takes the full chain, which also words the rejection.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from functools import lru_cache
from typing import NamedTuple

import asyncpg

from billing import native
from billing.domain.periods import to_us
from billing.domain.plans import PlanSpec
from billing.domain.usage_rules import EventChecks, UsageSubscription, event_checks, refusal
from billing.services import usage_alerts, usage_short
from billing.services.plans import PlanCache
from billing.store import usage as usage_store
from billing.store.db import set_tenant

_QUANTITY = usage_short.QUANTITY  # a non-negative exact decimal (ASCII digits only)
# The same, negative allowed: a correction of a sum charge that takes them, a weighted_sum
# change; and an event's price for a dynamic charge (non-negative, as a quantity).
_SIGNED_QUANTITY = re.compile(r"-?\d{1,15}(?:\.\d{1,12})?", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
MAX_EVENT_ID = usage_short.MAX_EVENT_ID
# Per subscription: uuid, state, metric codes, plan, checks, its now, earliest and latest event time.
_Known = tuple[uuid.UUID, UsageSubscription, frozenset[str], PlanSpec, EventChecks, int, int, int]
# Per subscription the short path may take: uuid, first and after-last time it accepts,
# the metrics it accepts, the period (start, end), and its start and end again (read per
# event, one subscript each).
_Fast = tuple[uuid.UUID, int, int, frozenset[str], tuple[int, int], int, int]
MAX_PROPERTIES = 50
# An event property is a label (a user id, a region), stored with every raw event: a
# megabyte of it is a producer bug, refused like NUL rather than kept forever.
MAX_PROPERTY_KEY = 100
MAX_PROPERTY_VALUE = 1000

# The per-event short path as compiled by `make install` when it could (billing/native.py).
SHORT_PATH = native.compiled(usage_short)

_TENANT = itemgetter(1)
_SUBSCRIPTION = itemgetter(2)
# Subscription texts longer than this are parsed each time, never kept: a producer's long
# garbage ids do not fill the cache of `_uuid_of`.
_UUID_TEXT_MAX = 64

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


class UsageEvent(NamedTuple):
    """A NamedTuple: the consumer builds one per message (`tuple.__new__` on it costs a
    fraction of a dataclass's __init__), and the checks read it by position."""

    event_id: str
    tenant_id: str
    subscription_id: str
    metric_code: str
    quantity: str
    occurred_at_us: int
    properties: dict | None = None


def as_event(e: tuple) -> UsageEvent:
    """An event by name. The consumer's hand Avro reader gives plain tuples in `UsageEvent`'s
    order (building the NamedTuple costs a second tuple per event); the checks read events
    by position, anything else reads them through this."""
    return e if isinstance(e, UsageEvent) else UsageEvent._make(e)


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
    # Per accepted input index: (period_start_us, period_end_us), for RecordUsage's answer
    # (left empty when the caller does not want it: `prepare(..., periods=False)`).
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


async def ingest(conn: asyncpg.Connection, events: Sequence[UsageEvent], *, now_us: int, limits: UsageLimits,
                 plans: PlanCache, periods: bool = True) -> IngestResult:
    """Validate, attribute and store a batch; `conn` is inside a transaction the caller owns.

    Sets the tenant on the connection for each tenant group in turn (transaction-local), so
    row-level security applies to every statement. `periods=False`: `result.periods` is
    left empty (the consumer does not answer per event).
    """
    result = await prepare(conn, events, now_us=now_us, limits=limits, plans=plans, periods=periods)
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
            stored = await usage_store.store_batch(conn, tenant, rows, want_ids=want_ids)
            if stored.inserted:  # nothing folded, nothing crossed (docs/alerts.md)
                await usage_alerts.after_batch(conn, tenant, stored)
            result.inserted += stored.inserted
            result.late += stored.late
            result.inserted_ids.update(stored.ids)
    result.pending.clear()


async def prepare(conn: asyncpg.Connection, events: Sequence[UsageEvent], *, now_us: int, limits: UsageLimits,
                  plans: PlanCache, periods: bool = True) -> IngestResult:
    """Validate and attribute a batch without storing it: the rejections, the periods, and
    the accepted rows in `pending` (their subscriptions stay locked FOR KEY SHARE)."""
    result = IngestResult(received=len(events))
    tenants = set(map(_TENANT, events))
    by_tenant: dict[str, Sequence[int]]
    if len(tenants) == 1:  # the usual batch: no grouping needed
        by_tenant = {tenants.pop(): range(len(events))}
    else:
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            groups.setdefault(e[1], []).append(i)
        by_tenant = dict(groups)
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
        await _ingest_tenant(conn, tenant, events, indexes, now_us, limits, plans, result, periods)
    return result


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


# The texts of a tenant's subscriptions come back batch after batch: parsed once per process
# (`uuid.UUID` is pure Python).
_uuid_of = lru_cache(maxsize=100_000)(_parse_uuid)


def _subscription_ids(texts: set[str]) -> dict[str, uuid.UUID | None]:
    """Per subscription text, its UUID (None: not one)."""
    return {t: _uuid_of(t) if len(t) <= _UUID_TEXT_MAX else _parse_uuid(t) for t in texts}


async def _known_subscriptions(conn, tenant: uuid.UUID, texts: set[str], now_us: int, limits: UsageLimits,
                               plans: PlanCache) -> tuple[dict[str, _Known | None], dict[str, _Fast], set[uuid.UUID]]:
    """Per subscription text of the batch: what the checks need (None: unknown), what the
    short path needs (only the subscriptions it may take), and which run on a test clock."""
    sub_ids = _subscription_ids(texts)
    subs: dict[uuid.UUID, UsageSubscription] = {}
    # The id as asyncpg returned it (its own UUID type, whose hash and bytes are C-level):
    # the rows carry it, and the COPY and the alerts' grouping read it once per event.
    row_ids: dict[uuid.UUID, uuid.UUID] = {}
    # A test clock's subscription takes usage by its clock's time (docs/time.md, "Test clocks").
    clock_now: dict[uuid.UUID, int] = {}
    # Read FOR KEY SHARE, held until the batch commits (billing/store/usage.py, `subscriptions`).
    for row in await usage_store.subscriptions(conn, tenant, [s for s in sub_ids.values() if s]):
        (row_id, plan_id, status, start_at, anchor, period_start, period_end, canceled_at, paused_at, resumes_at,
         zone, paused_from, paused_to, sub_clock) = row
        row_ids[row_id] = row_id
        subs[row_id] = UsageSubscription(
            plan_id, status, to_us(start_at), anchor,
            to_us(period_start) if period_start else None, to_us(period_end) if period_end else None,
            to_us(canceled_at) if canceled_at else None, to_us(paused_at) if paused_at else None,
            tuple(zip(map(to_us, paused_from), map(to_us, paused_to))) if paused_from else (),
            to_us(resumes_at) if resumes_at else None, zone=zone,
        )
        if sub_clock is not None:
            clock_now[row_id] = to_us(sub_clock)
    await plans.load(conn, tenant, {s.plan_id for s in subs.values()})

    known: dict[str, _Known | None] = {}
    fast: dict[str, _Fast] = {}
    # Per plan: its spec, checks, metrics, and the metrics the short path takes.
    per_plan: dict[uuid.UUID, tuple[PlanSpec, EventChecks, frozenset[str], frozenset[str]]] = {}
    for text, sub_id in sub_ids.items():
        sub = subs.get(sub_id) if sub_id else None
        if not (sub_id and sub):
            known[text] = None
            continue
        sub_id = row_ids[sub_id]
        plan = per_plan.get(sub.plan_id)
        if plan is None:
            spec = plans.spec(tenant, sub.plan_id)
            rules = event_checks(spec)
            metrics = plans.metric_codes(tenant, sub.plan_id)
            plan = per_plan[sub.plan_id] = (spec, rules, metrics, frozenset(metrics) - frozenset(rules.amount_property))
        spec, rules, metrics, fast_metrics = plan
        sub_now = clock_now.get(sub_id, now_us) if clock_now else now_us
        earliest, latest = sub_now - limits.max_age_us, sub_now + limits.max_future_skew_us
        known[text] = (sub_id, sub, metrics, spec, rules, sub_now, earliest, latest)
        # The short path: no refusal can apply at any time (started, never canceled or
        # paused), and inside [lo, hi) an event is in the current period, not too old, not
        # in the future, not before the start: `attribute` gives the current period, not late.
        if sub.period_start_us is not None and sub.period_end_us is not None and sub.canceled_us is None \
                and sub.paused_us is None and not sub.pauses:
            lo = max(earliest, sub.start_us, sub.period_start_us)
            hi = min(latest + 1, sub.period_end_us)
            if lo < hi:
                fast[text] = (sub_id, lo, hi, fast_metrics, (sub.period_start_us, sub.period_end_us),
                              sub.period_start_us, sub.period_end_us)
    return known, fast, set(clock_now)


async def _ingest_tenant(conn, tenant: uuid.UUID, events: Sequence[UsageEvent], indexes: Sequence[int], now_us: int,
                         limits: UsageLimits, plans: PlanCache, result: IngestResult, want_periods: bool) -> None:
    whole = isinstance(indexes, range)  # every event of the batch (one tenant)
    texts = set(map(_SUBSCRIPTION, events)) if whole else {events[i][2] for i in indexes}
    known, fast, on_clock = await _known_subscriptions(conn, tenant, texts, now_us, limits, plans)
    rows = usage_store.Batch()

    def slow(i: int, e: UsageEvent) -> None:
        _check_one(i, e, known, on_clock, limits, rows, result, want_periods)

    SHORT_PATH.take(events, indexes, fast, rows.rows, rows.indexes, result.periods if want_periods else None, slow)
    if rows:
        result.pending[tenant] = rows


def _check_one(i: int, e: UsageEvent, known: dict[str, _Known | None], on_clock: set[uuid.UUID],
               limits: UsageLimits, rows: usage_store.Batch, result: IngestResult, want_periods: bool) -> None:
    """Every check in its order: the event is rejected with the first that fails, or added.
    `e` may be any 7-tuple in UsageEvent's order (the consumer's decoder builds plain ones)."""
    event_id, _, sub_text, metric, quantity, t, props = e
    reject = result.rejected.append
    entry = known[sub_text]
    if entry is None:
        reject(Rejection(i, "unknown_subscription", f"no subscription {sub_text[:64]!r}"))
        return
    sub_id, sub, metrics, spec, rules, sub_now, earliest, latest = entry
    refused = refusal(sub, t)
    if refused is not None:
        reject(Rejection(i, refused, _REFUSAL_DETAIL[refused].format(sub_id=sub_id, status=sub.status)))
    elif metric not in metrics:
        reject(Rejection(i, "unknown_metric", f"metric {metric[:64]!r} is not on the subscription's plan"))
    elif not _QUANTITY.fullmatch(quantity) and not (metric in rules.negative_ok
                                                    and _SIGNED_QUANTITY.fullmatch(quantity)):
        reject(Rejection(i, check_quantity(quantity) or "invalid_quantity",
                         f"quantity {quantity[:40]!r} is not a non-negative decimal"))
    elif t > latest:
        reject(Rejection(i, "too_far_in_future", f"occurred_at is {(t - sub_now) // 1_000_000} s ahead of "
                                                 f"{'its test clock' if sub_id in on_clock else 'now'}"))
    elif t < earliest:
        reject(Rejection(i, "too_old", f"occurred_at is older than {limits.max_age_us // 86_400_000_000} days"))
    elif t < sub.start_us:
        reject(Rejection(i, "before_subscription_start", "occurred_at is before the subscription started"))
    elif not event_id or len(event_id) > MAX_EVENT_ID or "\x00" in event_id:
        reject(Rejection(i, "invalid_event_id", f"event_id must be 1..{MAX_EVENT_ID} characters, no NUL"))
    elif props and not _properties_ok(props):
        reject(Rejection(i, "invalid_properties",
                         f"properties: at most {MAX_PROPERTIES}, keys up to {MAX_PROPERTY_KEY} and values up to "
                         f"{MAX_PROPERTY_VALUE} characters, without NUL (PostgreSQL refuses NUL)"))
    elif rules.amount_property and metric in rules.amount_property and not _QUANTITY.fullmatch(
            (props or {}).get(rules.amount_property[metric], "")):
        reject(Rejection(i, "invalid_amount", f"properties[{rules.amount_property[metric]!r}] must hold "
                         "the event's price, a non-negative decimal (dynamic pricing)"))
    else:
        start, end, late = sub.attribute(spec, t)
        rows.add(i, as_event(e), sub_id, start, end, late)
        if want_periods:
            result.periods[i] = (start, end)

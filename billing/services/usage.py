"""Usage: RecordUsage's and GetUsage's use cases (`Usage`), over the ingestion of
`billing/services/usage_ingest.py` (validation, period attribution, storing a batch), whose
names are re-exported here for the callers that import them from this module.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.domain.invoice_assembly import usage_charge_lines
from billing.domain.periods import from_us, to_us
from billing.domain.plans import PlanSpec
from billing.domain.usage_rules import UsageSubscription, period_at
from billing.services.plans import PlanCache
from billing.services.usage_ingest import (MAX_EVENT_ID, MAX_PROPERTIES, MAX_PROPERTY_KEY, MAX_PROPERTY_VALUE,
                                           IngestResult, Rejection, UsageEvent, UsageLimits, check_quantity, ingest,
                                           prepare, store)
from billing.store import usage as usage_store

__all__ = [
    "MAX_EVENT_ID", "MAX_PROPERTIES", "MAX_PROPERTY_KEY", "MAX_PROPERTY_VALUE", "REJECTION_REASONS", "IngestResult",
    "PlanCache", "Recorded", "Rejection", "Usage", "UsageEvent", "UsageLimits", "UsageReport", "check_quantity",
    "ingest", "prepare", "store", "to_us",
]

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
        from billing.domain.pricing import price_usage
        from billing.services import paging, period_reads
        from billing.services.errors import NotFound, ValidationError
        from billing.store import subscriptions as subs_store

        sub_uuid = paging.parse_uuid(subscription_id, "subscription_id")
        if series not in ("", "hour", "day"):
            raise ValidationError("series", f"unknown granularity {series!r}")
        if not series and hasattr(db, "tenant_statement"):
            report = await self._get_in_one(db, caller, sub_uuid, subscription_id, period_start)
            if report is not None:
                return report
        async with db.tenant_tx(caller.tenant_id) as conn:
            sub = await subs_store.get(conn, caller.tenant_id, sub_uuid)
            if sub is None:
                raise NotFound("subscription", subscription_id)
            await self.plans.load(conn, caller.tenant_id, {sub.plan_id})
            spec = self.plans.spec(caller.tenant_id, sub.plan_id)
            start, end = _period(sub, spec, subscription_id, period_start)
            usage, stored_end = await period_reads.usage_of_period(conn, caller.tenant_id, sub_uuid, spec, start)
            end = _known_end(end or stored_end, start, subscription_id)
            late = {r["metric_code"]: r for r in await usage_store.late_usage(conn, caller.tenant_id, sub_uuid, start)}
            priced = list(price_usage(spec, usage, start, end))
            points = {}
            for p in priced if series else ():
                code = p.charge.metric_code
                points[code] = [(r["at"], r["quantity"]) for r in await usage_store.series(
                    conn, caller.tenant_id, sub_uuid, code, start, series)]
        return _report(sub_uuid, spec, start, end, priced, late, points)

    async def _get_in_one(self, db, caller, sub_uuid: uuid.UUID, subscription_id: str,
                          period_start: datetime | None) -> "UsageReport | None":
        """`get` without a series in one statement (store/subscription_reads.usage): the
        subscription, its period's totals and late events. None when that is not enough to
        answer as `get` would: the plan is not cached yet, or a charge is counted from the
        events (a unique count, a dynamic or per-event price, a weighted sum)."""
        from billing.domain.pricing import price_usage
        from billing.services import event_usage, period_reads
        from billing.services.errors import NotFound
        from billing.store import subscription_reads
        from billing.store import subscriptions as subs_store

        async with db.tenant_statement(caller.tenant_id) as (conn, entry):
            rows = await subscription_reads.usage(conn, caller.tenant_id, entry.key_hashes, entry.token, sub_uuid,
                                                  period_start)
        if not rows:
            raise NotFound("subscription", subscription_id)
        sub = subs_store.from_row(rows[0])
        try:
            spec = self.plans.spec(caller.tenant_id, sub.plan_id)
        except KeyError:
            return None
        if any(c.unique_property or event_usage.from_events(c) for c in spec.usage_charges):
            return None
        start, end = _period(sub, spec, subscription_id, period_start)
        usage, stored_end = period_reads.usage_from_totals(spec, [r for r in rows if r["kind"] == "total"])
        end = _known_end(end or stored_end, start, subscription_id)
        late = {r["metric_code"]: r for r in rows if r["kind"] == "late"}
        return _report(sub_uuid, spec, start, end, list(price_usage(spec, usage, start, end)), late, {})


def _period(sub, spec: PlanSpec, subscription_id: str, period_start: datetime | None) -> tuple[datetime, datetime | None]:
    """The period asked for: its start, and its end as the periods are drawn now (None: none
    starts there)."""
    from billing.services.errors import FailedPrecondition

    if period_start is None:
        if sub.current_period_start is None:
            raise FailedPrecondition(f"subscription {subscription_id} has not started (it is {sub.status})",
                                     reason="SUBSCRIPTION_NOT_STARTED")
        return sub.current_period_start, sub.current_period_end
    return period_start, _period_end_at(sub, spec, period_start)


def _known_end(end: datetime | None, start: datetime, subscription_id: str) -> datetime:
    """A start the periods as drawn now do not have may still be one usage was stored under
    (a period reopened by a resume: `end` is then the stored one); anything else names no
    period at all."""
    from billing.services.errors import ValidationError

    if end is None:
        raise ValidationError("period_start", f"{start.isoformat()} is not the start of a billing "
                              f"period of subscription {subscription_id} (unset: the current period)")
    return end


def _report(sub_uuid: uuid.UUID, spec: PlanSpec, start: datetime, end: datetime, priced: list, late: dict,
            points: dict) -> "UsageReport":
    """Priced as the period's close prices it: each amount is the sum of its rounded lines."""
    from billing.domain.money import round_money
    from billing.domain.pricing import total as pricing_total

    metrics = []
    for p in priced:
        code = p.charge.metric_code
        lr = late.get(code)
        metrics.append(MetricUsage(
            code, p.charge.aggregation.value, p.quantity,
            pricing_total(usage_charge_lines([p], spec.currency, start, end)), points.get(code, []),
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

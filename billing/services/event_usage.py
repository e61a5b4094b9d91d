"""The usage of the charges priced from events rather than the stored totals (dynamic,
percentage with a per-event minimum or maximum, weighted_sum), added to the periods' totals
a close or a preview prices: one query per (metric, charge) a plan of the chunk has, for
the subscriptions on such a plan (docs/pricing.md, "what is stored")."""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Iterable

import asyncpg

from billing.domain.aggregation import Gauge, PeriodUsage
from billing.domain.plans import Aggregation, PlanSpec, UsageCharge
from billing.domain.periods import to_us
from billing.domain.pricing_models import EventBands, event_bands, rate, weighted_quantity
from billing.store import event_aggregates

# (subscription id, period start) -> metric code -> the period's totals; the start None holds
# what any period of the subscription without totals of its own prices (a weighted_sum's gauge).
UsageByPeriod = dict[tuple[uuid.UUID, datetime | None], dict[str, PeriodUsage]]

_ZERO = Decimal(0)


def from_events(charge: UsageCharge) -> bool:
    return bool(charge.amount_property) or charge.per_event or charge.aggregation is Aggregation.WEIGHTED_SUM


def _update(usage: UsageByPeriod, key: tuple[uuid.UUID, datetime | None], metric: str, **values: object) -> None:
    by_metric = usage.setdefault(key, {})
    by_metric[metric] = replace(by_metric.get(metric) or PeriodUsage(), **values)  # type: ignore[arg-type]


async def add_event_usage(conn: asyncpg.Connection, tenant: uuid.UUID, subs: Iterable[tuple[uuid.UUID, PlanSpec]],
                          firsts: dict[uuid.UUID, datetime], before: datetime, usage: UsageByPeriod) -> None:
    """Add to `usage` what the event-priced charges of these subscriptions' plans need, for
    their periods from `firsts[sub]` to those starting before `before`."""
    wanted: dict[UsageCharge, set[uuid.UUID]] = {}
    for sub_id, spec in subs:
        for charge in spec.usage_charges:
            if from_events(charge):
                wanted.setdefault(charge, set()).add(sub_id)
    for charge, sub_ids in wanted.items():
        periods = [(s, firsts[s]) for s in sorted(sub_ids)]
        metric = charge.metric_code
        keys = [k for k in usage if k[0] in sub_ids]
        if charge.amount_property:
            for key in keys:  # no event: the events' prices sum to 0
                _update(usage, key, metric, amount_sum=_ZERO)
            for r in await event_aggregates.amount_sums(conn, tenant, metric, charge.amount_property, periods, before):
                _update(usage, (r["subscription_id"], r["period_start"]), metric, amount_sum=r["amount"])
        elif charge.per_event:
            for r in await event_aggregates.fee_bands(conn, tenant, metric, rate(charge),
                                                      charge.fixed_fee_per_event or _ZERO, charge.min_fee_per_event,
                                                      charge.max_fee_per_event, periods, before):
                _update(usage, (r["subscription_id"], r["period_start"]), metric,
                        bands=EventBands(r["below"], r["within"], r["within_amount"], r["above"]))
        else:
            levels = await event_aggregates.gauge_levels(conn, tenant, metric, periods)
            changes: dict[uuid.UUID, list[tuple[int, Decimal]]] = {s: [] for s in sub_ids}
            for r in await event_aggregates.gauge_changes(conn, tenant, metric, periods, before):
                changes[r["subscription_id"]].append((r["at_us"], r["quantity"]))
            gauges = {s: Gauge(levels.get(s, _ZERO), tuple(changes[s])) for s in sub_ids}
            for key in keys:
                _update(usage, key, metric, gauge=gauges[key[0]])
            for s in sub_ids:  # the periods without totals of their own
                _update(usage, (s, None), metric, gauge=gauges[s])


async def add_period_event_usage(conn: asyncpg.Connection, tenant: uuid.UUID, sub_id: uuid.UUID, spec: PlanSpec,
                                 start: datetime, usage: dict[str, PeriodUsage]) -> None:
    """The same for one period of one subscription (GetUsage's preview, a cancel's final usage)."""
    by_period: UsageByPeriod = {(sub_id, start): usage}
    await add_event_usage(conn, tenant, [(sub_id, spec)], {sub_id: start}, start + timedelta(microseconds=1),
                          by_period)
    for metric, value in by_period.get((sub_id, None), {}).items():
        if metric not in usage or usage[metric].gauge is None:
            usage[metric] = replace(usage.get(metric) or PeriodUsage(), gauge=value.gauge)


async def late_event_usage(conn: asyncpg.Connection, tenant: uuid.UUID, sub_id: uuid.UUID, charge: UsageCharge,
                           period: tuple[datetime, datetime], late_ids: list[str], before: PeriodUsage,
                           after: PeriodUsage) -> tuple[PeriodUsage, PeriodUsage]:
    """`before` and `after` (a period's totals without and with its late events) completed
    with what an event-priced charge needs, read from the period's events."""
    if not from_events(charge):
        return before, after
    start, end = period
    rows = await event_aggregates.period_events(conn, tenant, sub_id, charge.metric_code, start, late_ids,
                                                charge.amount_property)
    on_time = [r for r in rows if not r["late"]]
    if charge.amount_property:
        return (replace(before, amount_sum=sum((r["amount"] for r in on_time), _ZERO)),
                replace(after, amount_sum=sum((r["amount"] for r in rows), _ZERO)))
    if charge.per_event:
        return (replace(before, bands=event_bands(charge, [r["quantity"] for r in on_time])),
                replace(after, bands=event_bands(charge, [r["quantity"] for r in rows])))
    level = (await event_aggregates.gauge_levels(conn, tenant, charge.metric_code, [(sub_id, start)])).get(sub_id, _ZERO)
    start_us, end_us = to_us(start), to_us(end)
    return (replace(before, weighted_quantity=weighted_quantity(level, [(r["at_us"], r["quantity"]) for r in on_time],
                                                               start_us, end_us)),
            replace(after, weighted_quantity=weighted_quantity(level, [(r["at_us"], r["quantity"]) for r in rows],
                                                              start_us, end_us)))

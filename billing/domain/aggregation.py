"""Aggregation: the number a usage charge is priced on, picked from a period's totals.

``PeriodUsage`` holds one metric's totals of a period (the stored sums, counts and maxima,
and what is read from the events for the charges that need it); ``charge_quantity`` picks
the one a charge's aggregation names. Pure; re-exported by ``pricing``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from billing.domain.plans import Aggregation, UsageCharge
from billing.domain.pricing_models import EventBands, weighted_quantity

__all__ = ["Gauge", "PeriodUsage", "period_usage", "aggregate", "charge_quantity", "over_period"]


@dataclass(frozen=True)
class Gauge:
    """A weighted_sum metric's history as the store reads it for a subscription: the level
    before ``since_us`` (the sum of all earlier events) and the changes from then on
    (microseconds, quantity). Any period from ``since_us`` on is priced from it: the level at
    its start is ``level`` plus the earlier changes, the weighted sum that of its own."""

    level: Decimal
    changes: tuple[tuple[int, Decimal], ...] = ()

    def weighted(self, start_us: int, end_us: int) -> Decimal:
        level = self.level
        inside = []
        for t, delta in self.changes:
            if t < start_us:
                level += delta
            elif t < end_us:
                inside.append((t, delta))
        return weighted_quantity(level, inside, start_us, end_us)

_ZERO = Decimal(0)


@dataclass(frozen=True)
class PeriodUsage:
    """One metric's totals for a period; ``None`` where there was no event."""

    quantity_sum: Decimal | None = None
    event_count: int | None = None
    quantity_max: Decimal | None = None
    latest_quantity: Decimal | None = None
    unique_count: int | None = None
    # Read from the events only for the charges that need them (store/event_aggregates.py):
    weighted_quantity: Decimal | None = None  # weighted_sum: the time-weighted level
    amount_sum: Decimal | None = None  # dynamic: the sum of the prices the events carry
    bands: EventBands | None = None  # percentage with a per-event minimum or maximum
    gauge: Gauge | None = None  # weighted_sum, when weighted_quantity is not given: priced per period


def period_usage(quantity_sum: Decimal | None, event_count: int | None, quantity_max: Decimal | None,
                 latest_quantity: Decimal | None, unique_count: int | None = None) -> PeriodUsage:
    """``PeriodUsage(...)`` for the totals a billing run reads by the thousand: the same
    frozen object, its __dict__ filled at once instead of a setattr per field."""
    usage = object.__new__(PeriodUsage)
    usage.__dict__.update(quantity_sum=quantity_sum, event_count=event_count, quantity_max=quantity_max,
                          latest_quantity=latest_quantity, unique_count=unique_count, weighted_quantity=None,
                          amount_sum=None, bands=None, gauge=None)
    return usage


def _number(value: object, name: str) -> Decimal:
    if type(value) is Decimal and value.is_finite():
        return value
    if value is None:
        return _ZERO
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a Decimal or int, not bool")
    if isinstance(value, int):
        return Decimal(value)
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal or int, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def aggregate(
    aggregation: Aggregation | str,
    *,
    quantity_sum: Decimal | None = None,
    event_count: int | None = None,
    quantity_max: Decimal | None = None,
    latest_quantity: Decimal | None = None,
    unique_count: int | None = None,
    weighted_quantity: Decimal | None = None,
) -> Decimal:
    """The number a charge is priced on, picked from a period's usage totals.

    sum -> ``quantity_sum``, count -> ``event_count``, max -> ``quantity_max``,
    latest -> ``latest_quantity``, unique_count -> ``unique_count``, weighted_sum ->
    ``weighted_quantity``. Missing data (``None``: no events in the period) counts as 0.
    Only the picked value is looked at. A sum below zero (corrections, negative quantities,
    outweighing the period's usage) counts as 0: a period is never charged below nothing.
    """
    agg = aggregation if type(aggregation) is Aggregation else Aggregation(aggregation)
    if agg is Aggregation.SUM:
        return max(_ZERO, _number(quantity_sum, "quantity_sum"))
    if agg is Aggregation.WEIGHTED_SUM:
        return max(_ZERO, _number(weighted_quantity, "weighted_quantity"))
    if agg is Aggregation.COUNT:
        return _number(event_count, "event_count")
    if agg is Aggregation.MAX:
        return _number(quantity_max, "quantity_max")
    if agg is Aggregation.LATEST:
        return _number(latest_quantity, "latest_quantity")
    return _number(unique_count, "unique_count")


def charge_quantity(charge: UsageCharge, usage: PeriodUsage) -> Decimal:
    """The number ``charge`` is priced on, of a period's totals of its metric."""
    return aggregate(charge.aggregation, quantity_sum=usage.quantity_sum, event_count=usage.event_count,
                     quantity_max=usage.quantity_max, latest_quantity=usage.latest_quantity,
                     unique_count=usage.unique_count, weighted_quantity=usage.weighted_quantity)


def over_period(usage: PeriodUsage, start_us: int, end_us: int) -> PeriodUsage:
    """``usage`` with a weighted_sum's gauge turned into the period's weighted quantity (when
    it was not given): what ``charge_quantity`` picks for a weighted_sum charge."""
    if usage.gauge is None or usage.weighted_quantity is not None:
        return usage
    return replace(usage, weighted_quantity=usage.gauge.weighted(start_us, end_us))

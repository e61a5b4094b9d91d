"""The pricing models and aggregations beyond per_unit/package/tiers: what `pricing` calls for
percentage and dynamic charges, free units and amounts, package rounding, weighted sums and
per-event fee bands. Pure and exact (docs/pricing.md); `pricing.usage_lines` rounds each line.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from fractions import Fraction
from typing import Iterable

from billing.domain.plans import PackageRounding, UsageCharge

__all__ = [
    "EventBands",
    "WEIGHTED_SCALE",
    "band_of",
    "event_bands",
    "event_fee",
    "packages",
    "percentage_parts",
    "weighted_quantity",
]

_EXACT = Context(prec=10_000, traps=[Inexact, Rounded, InvalidOperation, Overflow])
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)

#: A weighted sum is a quantity, not money: its exact value is a fraction of the period
#: (1/2,678,400 of a 31-day month per second), so it is rounded half-even to this many
#: decimals, the precision of a unit price, before it is priced.
WEIGHTED_SCALE = 12


def packages(quantity: Decimal, size: Decimal, rounding: PackageRounding) -> int:
    """Packages charged for ``quantity``: every started one (UP, ceil) or only complete
    ones (DOWN, floor), computed exactly."""
    whole, rest = divmod(Fraction(quantity), Fraction(size))
    return int(whole) + (1 if rest and rounding is PackageRounding.UP else 0)


def rate(charge: UsageCharge) -> Decimal:
    """The percentage charge's rate as a fraction (1.5 % -> 0.015), exact."""
    return (charge.percentage_rate or _ZERO).scaleb(-2, context=_EXACT)


def event_fee(charge: UsageCharge, amount: Decimal) -> Decimal:
    """One event's fee under a percentage charge, exact: rate x amount + the fixed fee,
    raised to the per-event minimum and lowered to the per-event maximum."""
    band = band_of(charge, amount)
    if band == "min":
        return charge.min_fee_per_event  # type: ignore[return-value]
    if band == "max":
        return charge.max_fee_per_event  # type: ignore[return-value]
    return _EXACT.add(_EXACT.multiply(amount, rate(charge)), charge.fixed_fee_per_event or _ZERO)


def band_of(charge: UsageCharge, amount: Decimal) -> str:
    """"min", "max" or "mid": which per-event rule prices an event of this amount. The
    store's SQL (store/event_aggregates.py) classifies events by the same comparisons."""
    fee = _EXACT.add(_EXACT.multiply(amount, rate(charge)), charge.fixed_fee_per_event or _ZERO)
    if charge.min_fee_per_event is not None and fee < charge.min_fee_per_event:
        return "min"
    if charge.max_fee_per_event is not None and fee > charge.max_fee_per_event:
        return "max"
    return "mid"


@dataclass(frozen=True)
class EventBands:
    """A period's events of a percentage charge with a per-event minimum or maximum, by
    the rule that prices each: enough to price them all without keeping every event."""

    below_min: int = 0  # events whose fee is raised to the minimum
    within: int = 0  # events priced rate x amount + fixed fee
    within_amount: Decimal = _ZERO  # the sum of those events' amounts
    above_max: int = 0  # events whose fee is lowered to the maximum


def event_bands(charge: UsageCharge, amounts: Iterable[Decimal]) -> EventBands:
    """The bands of these event amounts (what the store computes in SQL)."""
    below = within = above = 0
    total = _ZERO
    for amount in amounts:
        band = band_of(charge, amount)
        if band == "min":
            below += 1
        elif band == "max":
            above += 1
        else:
            within += 1
            total = _EXACT.add(total, amount)
    return EventBands(below, within, total, above)


def percentage_parts(charge: UsageCharge, amount_sum: Decimal, event_count: int,
                     bands: EventBands | None) -> list[tuple[str, Decimal, Decimal]]:
    """(effect, quantity, unit price) of each line of a percentage charge, unrounded:
    "rate" (the amounts at the rate), "fixed" (events at the fixed fee), "min" and "max"
    (events at the per-event minimum / maximum). Without a per-event minimum or maximum
    the period's totals price it: the rate on the amount sum less the free units, the fixed
    fee on every event."""
    r = rate(charge)
    fixed = charge.fixed_fee_per_event
    if not charge.per_event:
        base = max(_ZERO, _EXACT.subtract(amount_sum, charge.free_units or _ZERO))
        parts = [("rate", base, r)]
        if fixed is not None:
            parts.append(("fixed", Decimal(event_count), fixed))
        return parts
    b = bands or EventBands()
    parts = [("rate", b.within_amount, r)]
    if fixed is not None:
        parts.append(("fixed", Decimal(b.within), fixed))
    if charge.min_fee_per_event is not None and b.below_min:
        parts.append(("min", Decimal(b.below_min), charge.min_fee_per_event))
    if charge.max_fee_per_event is not None and b.above_max:
        parts.append(("max", Decimal(b.above_max), charge.max_fee_per_event))
    return parts


def weighted_quantity(level_at_start: Decimal, changes: Iterable[tuple[int, Decimal]], start_us: int,
                      end_us: int) -> Decimal:
    """The time-weighted level of a gauge over [start, end): each event adds its quantity
    (negative to take away) from its time on, the level at the start carries the events of
    earlier periods. Sum of level x time it held / period length, never below zero,
    rounded half-even to `WEIGHTED_SCALE` decimals. Times in microseconds; events outside
    the period are refused (they belong to another period)."""
    if end_us <= start_us:
        raise ValueError("the period must end after it starts")
    level = Fraction(level_at_start)
    at = start_us
    area = Fraction(0)
    for t, delta in sorted(changes, key=lambda c: c[0]):
        if not start_us <= t < end_us:
            raise ValueError(f"event at {t} us is outside the period [{start_us}, {end_us})")
        area += level * (t - at)
        level += Fraction(delta)
        at = t
    area += level * (end_us - at)
    exact = max(Fraction(0), area / (end_us - start_us))
    # The exact quotient as a decimal of enough digits that quantizing rounds it once.
    scaled = exact * 10**WEIGHTED_SCALE
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * rest
    if twice > scaled.denominator or (twice == scaled.denominator and whole % 2):
        whole += 1
    value = Decimal(whole).scaleb(-WEIGHTED_SCALE, context=_EXACT)
    # Without the trailing zeros (1000, not 1000.000000000000), never in exponent form.
    value = value.normalize(_EXACT)
    return value.quantize(Decimal(1), context=_EXACT) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]

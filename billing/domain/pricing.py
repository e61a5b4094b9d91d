"""Pricing: what a usage charge and a base fee cost, as invoice lines.

Exact arithmetic (a private decimal context that traps ``Inexact``, never a float); money
is rounded once per ``Line`` (``money.round_money``) and totals are sums of rounded lines.
The pricing models and tier bounds are specified in docs/pricing.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from fractions import Fraction
from typing import Iterable

from billing.domain.money import decimal_to_str, round_money
from billing.domain.plans import Aggregation, PlanSpec, PricingModel, Tier, UsageCharge

__all__ = [
    "Line",
    "usage_amount",
    "usage_lines",
    "base_fee_line",
    "aggregate",
    "total",
]

#: Exact arithmetic: any result that would need rounding raises instead.
_EXACT = Context(prec=10_000, traps=[Inexact, Rounded, InvalidOperation, Overflow])
_ZERO = Decimal(0)


@dataclass(frozen=True)
class Line:
    """One invoice line, its amount already rounded by ``round_money``.

    ``unit_price`` is the price actually applied to ``quantity``: the tier's unit
    price for a tier line (never an effective average), the price per unit or per
    package otherwise, the base fee for a base-fee line. ``fraction`` is the share
    of a period a prorated line covers (``None`` when not prorated); ``tier`` the
    1-based tier number for tiered models (``None`` otherwise).
    ``original_period_start`` is set on ``late_usage`` lines only: the start of the
    already billed period the late usage belongs to.
    """

    kind: str
    description: str
    metric_code: str | None
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    period_start: datetime
    period_end: datetime
    fraction: Fraction | None = None
    tier: int | None = None
    original_period_start: datetime | None = None


# ----------------------------------------------------------------------- helpers


def _line(*, kind: str, description: str, metric_code: str | None, quantity: Decimal, unit_price: Decimal,
          amount: Decimal, period_start: datetime, period_end: datetime, fraction: Fraction | None,
          tier: int | None) -> Line:
    """``Line(...)`` for the lines a billing run makes by the thousand: the same frozen object
    (Line has no __post_init__), its __dict__ filled at once instead of the frozen __init__'s
    setattr per field, which cost two thirds of making a line."""
    line = object.__new__(Line)
    line.__dict__.update(kind=kind, description=description, metric_code=metric_code, quantity=quantity,
                         unit_price=unit_price, amount=amount, period_start=period_start, period_end=period_end,
                         fraction=fraction, tier=tier, original_period_start=None)
    return line


def _quantity(quantity: object) -> Decimal:
    if isinstance(quantity, bool):
        raise TypeError("quantity must be a Decimal, not bool")
    if isinstance(quantity, int):
        quantity = Decimal(quantity)
    if not isinstance(quantity, Decimal):
        raise TypeError(f"quantity must be a Decimal, not {type(quantity).__name__}")
    if not quantity.is_finite():
        raise ValueError(f"quantity must be finite, got {quantity}")
    if quantity < 0:
        raise ValueError(f"quantity must not be negative, got {quantity}")
    return quantity.copy_abs()  # -0 -> 0


def _mul(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.multiply(a, b)


def _add(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.add(a, b)


def _sub(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.subtract(a, b)


def _s(value: Decimal) -> str:
    return decimal_to_str(value)


def _model(charge: UsageCharge) -> PricingModel:
    model = charge.pricing_model
    return model if type(model) is PricingModel else PricingModel(model)


def _unit_price(charge: UsageCharge) -> Decimal:
    if charge.unit_price is None:
        raise ValueError(f"{charge.metric_code}: {_model(charge)} charge has no unit_price")
    return charge.unit_price


def _package_size(charge: UsageCharge) -> Decimal:
    size = charge.package_size
    if size is None or not size.is_finite() or size <= 0:
        raise ValueError(f"{charge.metric_code}: package charge needs package_size > 0")
    return size


def _packages(quantity: Decimal, size: Decimal) -> int:
    """Number of started packages: ceil(quantity / size), computed exactly."""
    return -((-Fraction(quantity)) // Fraction(size))


def _tiers(charge: UsageCharge) -> tuple[Tier, ...]:
    if not charge.tiers:
        raise ValueError(f"{charge.metric_code}: {_model(charge)} charge has no tiers")
    return charge.tiers


def _graduated_parts(charge: UsageCharge, quantity: Decimal) -> list[tuple[int, Tier, Decimal]]:
    """(1-based tier number, tier, quantity in that tier) for every tier reached."""
    parts: list[tuple[int, Tier, Decimal]] = []
    lower = _ZERO
    for number, tier in enumerate(_tiers(charge), start=1):
        if quantity <= lower:
            break
        if tier.up_to is not None and tier.up_to <= lower:
            raise ValueError(f"{charge.metric_code}: tier bounds must strictly increase")
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        parts.append((number, tier, _sub(upper, lower)))
        if tier.up_to is None:
            return parts
        lower = tier.up_to
    if quantity > lower:
        raise ValueError(f"{charge.metric_code}: quantity {quantity} exceeds the last tier")
    return parts


def _volume_tier(charge: UsageCharge, quantity: Decimal) -> tuple[int, Tier]:
    """(1-based tier number, tier) of the first tier whose range holds ``quantity``."""
    for number, tier in enumerate(_tiers(charge), start=1):
        if tier.up_to is None or quantity <= tier.up_to:
            return number, tier
    raise ValueError(f"{charge.metric_code}: quantity {quantity} exceeds the last tier")


def _tier_amount(tier: Tier, units: Decimal) -> Decimal:
    return _add(_mul(units, tier.unit_price), tier.flat_fee)


def _range(charge: UsageCharge, number: int) -> str:
    tiers = charge.tiers
    lower = "0" if number == 1 else _s(tiers[number - 2].up_to)  # type: ignore[arg-type]
    up_to = tiers[number - 1].up_to
    return f"({lower}, {'inf)' if up_to is None else _s(up_to) + ']'}"


def _fee(tier: Tier) -> str:
    return f" + flat fee {_s(tier.flat_fee)}" if tier.flat_fee else ""


def _period(period_start: datetime, period_end: datetime) -> None:
    if type(period_start) is datetime and type(period_end) is datetime and period_start < period_end:
        return  # the common case, twice per period a run closes; the checks below say what is wrong
    for name, value in (("period_start", period_start), ("period_end", period_end)):
        if not isinstance(value, datetime):
            raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if not period_start < period_end:
        raise ValueError(
            f"period_end {period_end.isoformat()} must be after period_start {period_start.isoformat()}"
        )


# ----------------------------------------------------------------------- API


def usage_amount(charge: UsageCharge, quantity: Decimal) -> Decimal:
    """Exact, unrounded price of ``quantity`` under ``charge`` (see module docstring)."""
    q = _quantity(quantity)
    model = _model(charge)
    if model is PricingModel.PER_UNIT:
        return _mul(q, _unit_price(charge))
    if model is PricingModel.PACKAGE:
        return _mul(Decimal(_packages(q, _package_size(charge))), _unit_price(charge))
    if model is PricingModel.GRADUATED:
        amount = _ZERO
        for _, tier, units in _graduated_parts(charge, q):
            amount = _add(amount, _tier_amount(tier, units))
        return amount
    # VOLUME
    _, tier = _volume_tier(charge, q)
    if q == 0:
        return _ZERO
    return _tier_amount(tier, q)


def usage_lines(
    charge: UsageCharge,
    quantity: Decimal,
    currency: str,
    period_start: datetime,
    period_end: datetime,
) -> list[Line]:
    """Invoice lines (kind ``"usage"``) for ``quantity`` of ``charge``, each rounded once.

    per_unit, package, volume: one line. graduated: one line per tier reached
    (a single zero line for tier 1 when the quantity is 0).
    """
    q = _quantity(quantity)
    _period(period_start, period_end)
    model = _model(charge)
    metric = charge.metric_code

    def line(description: str, qty: Decimal, price: Decimal, exact: Decimal, tier: int | None) -> Line:
        return _line(
            kind="usage",
            description=description,
            metric_code=metric,
            quantity=qty,
            unit_price=price,
            amount=round_money(exact, currency),
            period_start=period_start,
            period_end=period_end,
            fraction=None,
            tier=tier,
        )

    if model is PricingModel.PER_UNIT:
        price = _unit_price(charge)
        return [line(f"{metric}: {_s(q)} at {_s(price)}", q, price, _mul(q, price), None)]

    if model is PricingModel.PACKAGE:
        price, size = _unit_price(charge), _package_size(charge)
        packages = Decimal(_packages(q, size))
        return [
            line(
                f"{metric}: {_s(q)} in {_s(packages)} package(s) of {_s(size)} at {_s(price)}",
                packages,
                price,
                _mul(packages, price),
                None,
            )
        ]

    if model is PricingModel.GRADUATED:
        parts = _graduated_parts(charge, q)
        if not parts:  # quantity 0: show the charge, cost nothing
            first = charge.tiers[0]
            return [
                line(
                    f"{metric} tier 1 {_range(charge, 1)}: {_s(q)} at {_s(first.unit_price)}",
                    q,
                    first.unit_price,
                    _ZERO,
                    1,
                )
            ]
        return [
            line(
                f"{metric} tier {n} {_range(charge, n)}: {_s(units)} at {_s(tier.unit_price)}{_fee(tier)}",
                units,
                tier.unit_price,
                _tier_amount(tier, units),
                n,
            )
            for n, tier, units in parts
        ]

    # VOLUME
    n, tier = _volume_tier(charge, q)
    exact = _ZERO if q == 0 else _tier_amount(tier, q)
    fee = _fee(tier) if q != 0 else ""
    return [
        line(
            f"{metric} volume tier {n} {_range(charge, n)}: {_s(q)} at {_s(tier.unit_price)}{fee}",
            q,
            tier.unit_price,
            exact,
            n,
        )
    ]


def base_fee_line(spec: PlanSpec, period_start: datetime, period_end: datetime) -> Line:
    """The full-period base fee of ``spec`` as one line (kind ``"base_fee"``, quantity 1)."""
    _period(period_start, period_end)
    description, amount = _base_fee(spec.name, spec.code, spec.base_fee, spec.currency)
    return _line(
        kind="base_fee",
        description=description,
        metric_code=None,
        quantity=_ONE,
        unit_price=spec.base_fee,
        amount=amount,
        period_start=period_start,
        period_end=period_end,
        fraction=None,
        tier=None,
    )


_ONE = Decimal(1)


@lru_cache(maxsize=1024)
def _base_fee(name: str, code: str, fee: Decimal, currency: str) -> tuple[str, Decimal]:
    """The text and rounded amount of a plan's base fee line: the same for every period of
    the plan, and a run makes one per subscription (all immutable values)."""
    return f"{name} ({code}) base fee", round_money(fee, currency)


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
) -> Decimal:
    """The number a charge is priced on, picked from a period's usage totals.

    sum -> ``quantity_sum``, count -> ``event_count``, max -> ``quantity_max``,
    latest -> ``latest_quantity``, unique_count -> ``unique_count``. Missing data
    (``None``: no events in the period) counts as 0. Only the picked value is
    looked at.
    """
    agg = aggregation if type(aggregation) is Aggregation else Aggregation(aggregation)
    if agg is Aggregation.SUM:
        return _number(quantity_sum, "quantity_sum")
    if agg is Aggregation.COUNT:
        return _number(event_count, "event_count")
    if agg is Aggregation.MAX:
        return _number(quantity_max, "quantity_max")
    if agg is Aggregation.LATEST:
        return _number(latest_quantity, "latest_quantity")
    return _number(unique_count, "unique_count")


def total(lines: Iterable[Line]) -> Decimal:
    """Sum of the (already rounded) line amounts; no further rounding. Empty -> 0."""
    result = _ZERO
    for ln in lines:
        result = _add(result, ln.amount)
    return result

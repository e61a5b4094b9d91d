"""Pricing: what a usage charge and a base fee cost, as invoice lines.

Exact arithmetic (a private decimal context that traps Inexact), money rounded once per
line; the pricing models and tier bounds are described in docs/pricing.md. `price_usage`
is THE pricing of a period's usage: the run's period close, an immediate cancel's final
usage and GetUsage's preview all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from fractions import Fraction
from typing import Iterable, Mapping, NamedTuple, Protocol

from billing.domain.money import decimal_to_str, round_money
from billing.domain.periods import to_us
from billing.domain.plans import PackageRounding, PlanSpec, PricingModel, Tier, UsageCharge
from billing.domain.aggregation import PeriodUsage, aggregate, charge_quantity, over_period, period_usage
from billing.domain.pricing_models import packages, percentage_parts

__all__ = [
    "Line",
    "PeriodUsage",
    "period_usage",
    "charge_quantity",
    "PricedCharge",
    "charge_amount",
    "price_usage",
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


_NO_USAGE = PeriodUsage()


class _LineMaker(Protocol):
    def __call__(self, description: str, qty: Decimal, price: Decimal, exact: Decimal, tier: int | None,
                 kind: str = "usage") -> Line: ...


class PricedCharge(NamedTuple):
    """One usage charge of a period, priced: the quantity it charges and its lines."""

    charge: UsageCharge
    quantity: Decimal
    lines: list[Line]


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


def _packages(charge: UsageCharge, quantity: Decimal, size: Decimal) -> int:
    """Packages charged: every started one, or only complete ones (``package_rounding``)."""
    return packages(quantity, size, charge.package_rounding)


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


def usage_amount(charge: UsageCharge, quantity: Decimal, usage: PeriodUsage | None = None) -> Decimal:
    """Exact, unrounded price of ``quantity`` under ``charge``, free units and free amount
    applied; percentage and dynamic charges also need the period's ``usage`` (events,
    amounts). The sum of ``usage_lines`` is this amount with each line rounded."""
    q = _quantity(quantity)
    model = _model(charge)
    if model is PricingModel.PERCENTAGE or model is PricingModel.DYNAMIC:
        amount = _ZERO
        for _, units, price in _event_parts(charge, q, usage or _NO_USAGE):
            amount = _add(amount, _mul(units, price))
        return _less_free_amount(charge, amount)
    q = _charged(charge, q)
    if model is PricingModel.PER_UNIT:
        amount = _mul(q, _unit_price(charge))
    elif model is PricingModel.PACKAGE:
        amount = _mul(Decimal(_packages(charge, q, _package_size(charge))), _unit_price(charge))
    elif model is PricingModel.GRADUATED:
        amount = _ZERO
        for _, tier, units in _graduated_parts(charge, q):
            amount = _add(amount, _tier_amount(tier, units))
        if q == 0 and charge.zero_usage_flat_fee:
            amount = _tiers(charge)[0].flat_fee
    else:  # VOLUME
        _, tier = _volume_tier(charge, q)
        amount = _tier_amount(tier, q) if q != 0 else (tier.flat_fee if charge.zero_usage_flat_fee else _ZERO)
    return _less_free_amount(charge, amount)


def charge_amount(charge: UsageCharge, usage: PeriodUsage) -> Decimal:
    """Exact, unrounded price of a period's ``usage`` of one charge (every model)."""
    return usage_amount(charge, charge_quantity(charge, usage), usage)


def _charged(charge: UsageCharge, q: Decimal) -> Decimal:
    """The quantity the model prices: the aggregated one less the charge's free units."""
    free = charge.free_units
    return q if not free else max(_ZERO, _sub(q, free))


def _less_free_amount(charge: UsageCharge, amount: Decimal) -> Decimal:
    free = charge.free_amount
    return amount if not free else max(_ZERO, _sub(amount, free))


_EFFECT_TEXT = {"fixed": "event(s) at the fixed fee", "min": "event(s) at the per-event minimum",
                "max": "event(s) at the per-event maximum"}


def _event_parts(charge: UsageCharge, q: Decimal, usage: PeriodUsage) -> list[tuple[str, Decimal, Decimal]]:
    """(effect, quantity, unit price) of a percentage or dynamic charge's lines."""
    if _model(charge) is PricingModel.DYNAMIC:
        return [("amount", _ONE, usage.amount_sum or _ZERO)]
    return percentage_parts(charge, q, usage.event_count or 0, usage.bands)


def usage_lines(charge: UsageCharge, quantity: Decimal, currency: str, period_start: datetime,
                period_end: datetime, usage: PeriodUsage | None = None) -> list[Line]:
    """Invoice lines for ``quantity`` of ``charge``, each rounded once, one per effect.

    per_unit, package, volume: one line. graduated: one line per tier reached (a single
    line for tier 1 when the quantity is 0). percentage: the rate line, then one per
    per-event effect (fixed fees, minimums, maximums). dynamic: one line, the sum of the
    events' prices. Before them a ``free_units`` line (amount 0) when the charge has free
    units; after them a ``free_amount`` line (negative) when it has a free amount. Every
    line is of kind ``usage`` but those two.
    """
    q = _quantity(quantity)
    _period(period_start, period_end)
    model = _model(charge)
    metric = charge.metric_code

    def line(description: str, qty: Decimal, price: Decimal, exact: Decimal, tier: int | None,
             kind: str = "usage") -> Line:
        return _line(kind=kind, description=description, metric_code=metric, quantity=qty, unit_price=price,
                     amount=round_money(exact, currency), period_start=period_start, period_end=period_end,
                     fraction=None, tier=tier)

    lines: list[Line] = []
    if charge.free_units:
        used = min(q, charge.free_units)
        lines.append(line(f"{metric}: {_s(used)} of {_s(charge.free_units)} free units", used, _ZERO, _ZERO, None,
                          "free_units"))
    if model is PricingModel.PERCENTAGE or model is PricingModel.DYNAMIC:
        for effect, units, price in _event_parts(charge, q, usage or _NO_USAGE):
            if effect == "amount":
                count = (usage or _NO_USAGE).event_count or 0
                text = f"{metric}: {_s(q)} in {count} event(s), priced by the events"
            elif effect == "rate":
                text = f"{metric}: {_s(units)} at {_s(charge.percentage_rate or _ZERO)} %"
            else:
                text = f"{metric}: {_s(units)} {_EFFECT_TEXT[effect]} {_s(price)}"
            lines.append(line(text, units, price, _mul(units, price), None))
    else:
        lines.extend(_model_lines(charge, _charged(charge, q), line))
    if charge.free_amount:
        charged = total(ln for ln in lines)
        free = min(charge.free_amount, charged)
        lines.append(line(f"{metric}: free amount {_s(free)} of {_s(charge.free_amount)}", _ONE, -free, -free, None,
                          "free_amount"))
    return lines


def _model_lines(charge: UsageCharge, q: Decimal, line: "_LineMaker") -> list[Line]:
    metric = charge.metric_code
    model = _model(charge)
    if model is PricingModel.PER_UNIT:
        price = _unit_price(charge)
        return [line(f"{metric}: {_s(q)} at {_s(price)}", q, price, _mul(q, price), None)]

    if model is PricingModel.PACKAGE:
        price, size = _unit_price(charge), _package_size(charge)
        count = Decimal(_packages(charge, q, size))
        how = "" if charge.package_rounding is PackageRounding.UP else " complete"
        return [line(f"{metric}: {_s(q)} in {_s(count)}{how} package(s) of {_s(size)} at {_s(price)}",
                     count, price, _mul(count, price), None)]

    if model is PricingModel.GRADUATED:
        parts = _graduated_parts(charge, q)
        if not parts:  # quantity 0: show the charge; its flat fee only if the charge says so
            first = charge.tiers[0]
            fee = first.flat_fee if charge.zero_usage_flat_fee else _ZERO
            return [line(f"{metric} tier 1 {_range(charge, 1)}: {_s(q)} at {_s(first.unit_price)}"
                         f"{_fee(first) if fee else ''}", q, first.unit_price, fee, 1)]
        return [line(f"{metric} tier {n} {_range(charge, n)}: {_s(units)} at {_s(tier.unit_price)}{_fee(tier)}",
                     units, tier.unit_price, _tier_amount(tier, units), n)
                for n, tier, units in parts]

    # VOLUME
    n, tier = _volume_tier(charge, q)
    charged_fee = q != 0 or charge.zero_usage_flat_fee
    exact = _tier_amount(tier, q) if charged_fee else _ZERO
    fee_text = _fee(tier) if charged_fee else ""
    return [line(f"{metric} volume tier {n} {_range(charge, n)}: {_s(q)} at {_s(tier.unit_price)}{fee_text}",
                 q, tier.unit_price, exact, n)]


def base_fee_line(spec: PlanSpec, period_start: datetime, period_end: datetime) -> Line:
    """The full-period base fee of ``spec`` as one line (kind ``"base_fee"``, quantity 1)."""
    _period(period_start, period_end)
    description, amount = _base_fee(spec.name, spec.code, spec.base_fee, spec.currency)
    return _line(kind="base_fee", description=description, metric_code=None, quantity=_ONE,
                 unit_price=spec.base_fee, amount=amount, period_start=period_start, period_end=period_end,
                 fraction=None, tier=None)


_ONE = Decimal(1)


@lru_cache(maxsize=1024)
def _base_fee(name: str, code: str, fee: Decimal, currency: str) -> tuple[str, Decimal]:
    """The text and rounded amount of a plan's base fee line: the same for every period of
    the plan, and a run makes one per subscription (all immutable values)."""
    return f"{name} ({code}) base fee", round_money(fee, currency)


def total(lines: Iterable[Line]) -> Decimal:
    """Sum of the (already rounded) line amounts; no further rounding. Empty -> 0."""
    result = _ZERO
    for ln in lines:
        result = _add(result, ln.amount)
    return result


def price_usage(plan: PlanSpec, usage: Mapping[str, PeriodUsage], period_start: datetime,
                period_end: datetime) -> list[PricedCharge]:
    """Every usage charge of ``plan`` priced on a period's totals (by metric code): one or
    more lines each, a charge without usage as a zero line so that every charge shows."""
    priced = []
    for charge in plan.usage_charges:
        metric_usage = usage.get(charge.metric_code) or _NO_USAGE
        metric_usage = over_period(metric_usage, to_us(period_start), to_us(period_end))
        quantity = charge_quantity(charge, metric_usage)
        priced.append(PricedCharge(charge, quantity, usage_lines(charge, quantity, plan.currency, period_start,
                                                                 period_end, metric_usage)))
    return priced

"""Invoice assembly: what comes after pricing, in ONE documented order (docs/billing.md,
"The order of an invoice"):

    charges -> discounts -> commitment true-up -> credits

1. **charges**: base fee and proration lines, the usage lines of ``pricing.price_usage``
   with a ``usage_cap`` line after a charge whose amount exceeds its ``max_amount``
   (``usage_charge_lines``), late usage lines, pending lines.
2. **discounts** (``discount_lines``): one negative ``discount`` line per discount that
   applies, in their order (creation time, then id), never taking its targets or the
   invoice below zero.
3. **commitment true-up** (``commitment_line``): one ``commitment_true_up`` line when the
   charges after discounts fall below the plan's minimum commitment, prorated for a
   partial period by the second-based rule of proration.
4. **credits**: not here: a credit burns what a grant has left, which the chunk's grant
   book holds, so ``services/period_close`` applies ``domain/credits`` to what
   ``assemble`` returns, last.

Pure: no I/O, no clock. Exact ``Decimal``; every line rounded once (half-even, by
``money.round_money`` or ``proration.prorated_amount``).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Iterable, Sequence

from billing.domain.money import decimal_to_str, round_money
from billing.domain.plans import PlanSpec
from billing.domain.pricing import Line, PeriodUsage, PricedCharge, price_usage, total
from billing.domain.proration import prorated_amount

__all__ = [
    "USAGE_CAP", "DISCOUNT", "COMMITMENT_TRUE_UP", "BASE_FEE_TARGET", "DiscountKind", "Discount",
    "usage_charge_lines", "charged_usage", "discount_lines", "commitment_line", "assemble",
]

USAGE_CAP = "usage_cap"
DISCOUNT = "discount"
COMMITMENT_TRUE_UP = "commitment_true_up"
#: The target name of the base fee (and its proration lines) in a discount's ``applies_to``.
BASE_FEE_TARGET = "base_fee"
_BASE_FEE_KINDS = frozenset({"base_fee", "proration_charge", "proration_credit"})
_ZERO = Decimal(0)


class DiscountKind(StrEnum):
    PERCENTAGE = "percentage"
    FIXED_AMOUNT = "fixed_amount"


@dataclass(frozen=True)
class Discount:
    """A discount of a subscription as one close sees it.

    ``value``: percent (0 < value <= 100) for PERCENTAGE, an amount in the plan's currency
    for FIXED_AMOUNT (per period). ``applies_to``: empty for the whole invoice, else target
    names (``BASE_FEE_TARGET`` or metric codes). ``periods``: how many period closes it
    applies to (None: forever); ``used``: the closes it counted already."""

    id: str
    kind: DiscountKind
    value: Decimal
    applies_to: tuple[str, ...] = ()
    periods: int | None = None
    used: int = 0

    def applies(self) -> bool:
        return self.periods is None or self.used < self.periods


# ----------------------------------------------------------------------- 1. charges: caps


def usage_charge_lines(priced: Iterable[PricedCharge], currency: str, period_start: datetime,
                       period_end: datetime) -> list[Line]:
    """Each charge's lines, followed by a ``usage_cap`` line (negative) when their sum
    exceeds the charge's ``max_amount``: the cap is its own line, so the priced usage stays
    visible. The cap is per period and not prorated (docs/pricing.md)."""
    out: list[Line] = []
    for p in priced:
        out.extend(p.lines)
        cap = p.charge.max_amount
        if cap is None:
            continue
        amount = total(p.lines)
        if amount > cap:
            over = amount - cap
            out.append(Line(kind=USAGE_CAP, description=f"{p.charge.metric_code}: capped at {decimal_to_str(cap)} "
                            f"per period ({decimal_to_str(amount)} priced)", metric_code=p.charge.metric_code,
                            quantity=Decimal(1), unit_price=-over, amount=round_money(-over, currency),
                            period_start=period_start, period_end=period_end))
    return out


def charged_usage(plan: PlanSpec, metric_code: str, usage: PeriodUsage, period_start: datetime,
                  period_end: datetime) -> Decimal:
    """What a period close charges for one metric's usage totals: the sum of its lines as
    ``usage_charge_lines`` makes them (each rounded once, cap included). Late usage charges
    the increase of this number, so a period's total never depends on when its events came."""
    priced = [p for p in price_usage(plan, {metric_code: usage}, period_start, period_end)
              if p.charge.metric_code == metric_code]
    return total(usage_charge_lines(priced, plan.currency, period_start, period_end))


# ----------------------------------------------------------------------- 2. discounts


def _target(line: Line) -> str:
    """What a discount names to reach this line: the base fee, a metric code, or "" (a
    line only a whole-invoice discount reaches)."""
    if line.kind in _BASE_FEE_KINDS:
        return BASE_FEE_TARGET
    return line.metric_code or ""


def discount_lines(charges: Sequence[Line], discounts: Sequence[Discount], currency: str,
                   period_start: datetime, period_end: datetime) -> list[Line]:
    """One ``discount`` line per applying discount, in the given order.

    A discount's base is what is left of its targets (all charges, or the named ones)
    after the earlier discounts; percentage: ``round(base * value / 100)``, fixed amount:
    ``value``; both at most the base and at most what is left of the invoice, so neither a
    charge group nor the invoice goes below zero. A discount with nothing to take makes no
    line. What a discount took is taken from its targets in name order (``_take``)."""
    if not discounts:
        return []  # the common case, once per close of a run
    left: dict[str, Decimal] = {}
    for ln in charges:
        key = _target(ln)
        left[key] = left.get(key, _ZERO) + ln.amount
    out: list[Line] = []
    for d in discounts:
        if not d.applies():
            continue
        keys = sorted(left) if not d.applies_to else sorted(k for k in left if k in d.applies_to)
        base = sum((left[k] for k in keys), _ZERO)
        room = min(base, sum(left.values(), _ZERO))
        if room <= 0:
            continue
        if d.kind is DiscountKind.PERCENTAGE:
            amount = prorated_amount(base, Fraction(d.value) / 100, currency)
        else:
            amount = round_money(d.value, currency)
        amount = min(amount, room)
        if amount <= 0:
            continue
        _take(left, keys, amount)
        what = "the invoice" if not d.applies_to else ", ".join(sorted(d.applies_to))
        rate = f"{decimal_to_str(d.value)}%" if d.kind is DiscountKind.PERCENTAGE else decimal_to_str(d.value)
        out.append(Line(kind=DISCOUNT, description=f"discount {d.id}: {rate} off {what}",
                        metric_code=d.applies_to[0] if len(d.applies_to) == 1 and d.applies_to[0] != BASE_FEE_TARGET
                        else None, quantity=Decimal(1), unit_price=-amount, amount=-amount,
                        period_start=period_start, period_end=period_end))
    return out


def _take(left: dict[str, Decimal], keys: list[str], amount: Decimal) -> None:
    for k in keys:
        if amount <= 0:
            return
        if left[k] > 0:
            part = min(left[k], amount)
            left[k] -= part
            amount -= part


# ----------------------------------------------------------------------- 3. commitment


def commitment_line(plan: PlanSpec, after_discounts: Decimal, share: Fraction, period_start: datetime,
                    period_end: datetime) -> Line | None:
    """The true-up to the plan's minimum commitment, prorated by ``share`` (the part of
    the nominal period billed, 1 for a whole period), rounded once; None when the charges
    after discounts reach it."""
    if not plan.minimum_commitment or share <= 0:
        return None
    commitment = (round_money(plan.minimum_commitment, plan.currency) if share == 1
                  else prorated_amount(plan.minimum_commitment, share, plan.currency))
    short = commitment - after_discounts
    if short <= 0:
        return None
    part = "" if share == 1 else f" ({share.numerator}/{share.denominator} of the period)"
    return Line(kind=COMMITMENT_TRUE_UP, description=f"minimum commitment {decimal_to_str(commitment)}{part}: "
                f"charges after discounts {decimal_to_str(after_discounts)}", metric_code=None,
                quantity=Decimal(1), unit_price=short, amount=short, period_start=period_start,
                period_end=period_end, fraction=None if share == 1 else share)


# ----------------------------------------------------------------------- the order


def assemble(plan: PlanSpec, charges: Sequence[Line], discounts: Sequence[Discount], *,
             commitment_share: Fraction | None, period_start: datetime, period_end: datetime) -> tuple[Line, ...]:
    """charges -> discounts -> commitment true-up, one line per effect (credits follow, in
    the period close). ``commitment_share`` None: no commitment for this invoice (a trial)."""
    lines = list(charges)
    if discounts:
        lines += discount_lines(lines, discounts, plan.currency, period_start, period_end)
    if commitment_share is not None:
        true_up = commitment_line(plan, total(lines), commitment_share, period_start, period_end)
        if true_up is not None:
            lines.append(true_up)
    return tuple(lines)


"""Progressive billing (docs/billing.md, "Progressive billing"): what an amount threshold
measures, what a threshold invoice charges, and what the period's final invoice subtracts.
Pure.

The running amount of a period is its usage charges priced exactly as the period close
prices them (``invoice_assembly.usage_charge_lines`` over ``pricing.price_usage``, caps
included), before discounts, the commitment true-up and credits, which the close applies
to the whole period. Base fees are not in it: they are billed when the plan says.

A threshold invoice charges the running amount less what the period's earlier threshold
invoices charged (one negative ``progressive_billed`` line); the final invoice is the
period's invoice as it would be without progressive billing, plus one negative
``progressive_billed`` line of everything the threshold invoices charged. So the period's
requests sum to the single invoice's total exactly, to the minor unit, whatever the
rounding of each line: every line is the single invoice's own, and the subtraction is of
amounts already rounded.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Mapping, Sequence

from billing.domain.invoice_assembly import usage_charge_lines
from billing.domain.money import decimal_to_str
from billing.domain.plans import PlanSpec
from billing.domain.pricing import Line, PeriodUsage, price_usage, total

__all__ = ["PROGRESSIVE_BILLED", "running_lines", "running_amount", "threshold_invoice", "billed_line",
           "with_billed"]

PROGRESSIVE_BILLED = "progressive_billed"
_ZERO = Decimal(0)


def running_lines(plan: PlanSpec, usage: Mapping[str, PeriodUsage], period_start: datetime,
                  period_end: datetime) -> list[Line]:
    """The usage lines a close of the period would make from these totals."""
    return usage_charge_lines(price_usage(plan, usage, period_start, period_end), plan.currency, period_start,
                              period_end)


def running_amount(plan: PlanSpec, usage: Mapping[str, PeriodUsage], period_start: datetime,
                   period_end: datetime) -> Decimal:
    """What an amount threshold compares with its value."""
    return total(running_lines(plan, usage, period_start, period_end))


def billed_line(billed: Decimal, period_start: datetime, period_end: datetime) -> Line | None:
    """The negative line of what threshold invoices charged in the period already (None: nothing)."""
    if billed <= 0:
        return None
    return Line(kind=PROGRESSIVE_BILLED, description=f"charged by threshold invoices of the period: {decimal_to_str(billed)}",
                metric_code=None, quantity=Decimal(1), unit_price=-billed, amount=-billed,
                period_start=period_start, period_end=period_end)


def with_billed(lines: Sequence[Line], billed: Decimal, period_start: datetime,
                period_end: datetime) -> tuple[Line, ...]:
    """A final invoice's lines: the period's own, then what threshold invoices charged, less."""
    line = billed_line(billed, period_start, period_end)
    return tuple(lines) if line is None else (*lines, line)


def threshold_invoice(lines: Sequence[Line], billed: Decimal, period_start: datetime,
                      period_end: datetime) -> tuple[Line, ...]:
    """A threshold invoice's lines: the running usage lines less what the period's threshold
    invoices charged already; empty when that leaves nothing to charge (a `latest` or `max`
    quantity can make the running amount fall)."""
    out = with_billed(lines, billed, period_start, period_end)
    return out if total(out) > _ZERO else ()

"""Late usage: usage that arrived after its period was billed, priced for the next invoice.

Pure: no I/O, no clock. The billing run finds, for a subscription it bills, the late events
not billed yet, grouped by metric and original period, with two sets of totals for that
original period: ``before`` (every event of the period already billed: the on-time events
and late events billed by earlier runs) and ``after`` (the same plus the late events now
billed). ``late_usage_line`` turns one group into ONE ``late_usage`` line that names its
original period (``Line.original_period_start``).

The rule: **a late line charges what the period's usage costs now minus what was charged
for it already.** ``amount = charged(after) - charged(before)`` where ``charged`` is
``invoice_assembly.charged_usage``: the sum of the lines a period close makes for the
metric's totals (``pricing.price_usage``, each line rounded once, the charge's cap
included), under the plan in effect during the original period. ``charged(before)`` IS what
was charged already: the on-time close charged ``charged(on-time totals)``, and every late
line brings the period to ``charged(after)``, the ``before`` of the next one. So after any
number of late lines, in any order, the period has been charged exactly what its close
would have charged had every event come on time: 333 units on time and 333 late at 0.001
charge 0.33 + 0.34 = 0.67, the price of 666 units (docs/billing.md, Late usage). Both
amounts are already rounded: the late line itself needs no rounding.

* sum / count: the late quantity (or number of late events) at the marginal price; a
  volume tier change re-prices every unit; package: the packages the late units start.
* max / latest / unique_count: the difference with and without the late events (a late
  event below the billed maximum costs nothing; ``latest`` may go down, which gives a
  negative line: a credit; a late unique value seen already costs nothing).

The line's ``quantity`` is ``aggregate(after) - aggregate(before)`` (the packages added for a
package charge); ``unit_price`` is the charge's unit price for per_unit and package, else the
effective price ``amount / quantity`` (10 decimal places, for the reader; the amount is
what counts).

Free late usage (zero line, still billed exactly once): usage of a trial period (usage in a
trial is free), and usage of a metric the original period's plan does not charge.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from billing.domain.invoice_assembly import charged_usage
from billing.domain.money import decimal_to_str, round_money
from billing.domain.plans import PlanSpec, PricingModel
from billing.domain.pricing import Line, PeriodUsage, charge_quantity
from billing.domain.pricing_models import packages

__all__ = ["LateUsage", "late_usage_line", "KIND"]

KIND = "late_usage"
_ZERO = Decimal(0)
_PRICE_PLACES = Decimal("1e-10")


@dataclass(frozen=True)
class LateUsage:
    """The not yet billed late events of one metric in one already billed period."""

    metric_code: str
    original_start: datetime  # the billed period the events belong to
    original_end: datetime
    events: int  # how many late events this line bills
    before: PeriodUsage  # totals of the period's events billed already
    after: PeriodUsage  # the same plus the late events


def late_usage_line(late: LateUsage, plan: PlanSpec, *, trial: bool) -> Line:
    """One ``late_usage`` line (see the module docstring for the rule); ``plan`` is the plan
    in effect during the original period."""
    currency = plan.currency
    charge = next((c for c in plan.usage_charges if c.metric_code == late.metric_code), None)
    period = (f"{late.original_start.date().isoformat()}..{late.original_end.date().isoformat()}")
    head = f"late {late.metric_code} usage of {period} ({late.events} event(s))"

    def line(description: str, quantity: Decimal, unit_price: Decimal, amount: Decimal) -> Line:
        return Line(kind=KIND, description=description, metric_code=late.metric_code, quantity=quantity,
                    unit_price=unit_price, amount=round_money(amount, currency), period_start=late.original_start,
                    period_end=late.original_end, fraction=None, tier=None,
                    original_period_start=late.original_start)

    if trial or charge is None:
        why = "trial period: usage is free" if trial else "the plan of that period does not charge this metric"
        return line(f"{head}: {why}", _ZERO, _ZERO, _ZERO)
    q_before, q_after = charge_quantity(charge, late.before), charge_quantity(charge, late.after)
    start, end = late.original_start, late.original_end
    now = charged_usage(plan, late.metric_code, late.after, start, end)
    already = charged_usage(plan, late.metric_code, late.before, start, end)
    exact = now - already
    quantity = q_after - q_before
    model = PricingModel(charge.pricing_model)
    if model is PricingModel.PER_UNIT:
        unit_price = charge.unit_price
    elif model is PricingModel.PACKAGE:
        size = charge.package_size
        assert size is not None  # a package charge has one (plans.parse_plan)
        rounding = charge.package_rounding
        quantity = Decimal(packages(q_after, size, rounding) - packages(q_before, size, rounding))  # packages added
        unit_price = charge.unit_price
    elif quantity:
        unit_price = (exact / quantity).quantize(_PRICE_PLACES, rounding=ROUND_HALF_EVEN)
    else:
        unit_price = _ZERO
    assert unit_price is not None  # per_unit and package charges have one (plans.parse_plan)
    description = (f"{head}: {charge.aggregation.value} {decimal_to_str(q_before)} -> {decimal_to_str(q_after)}, "
                   f"{decimal_to_str(now)} now less {decimal_to_str(already)} charged already")
    return line(description, quantity, unit_price, exact)

"""`pricing.price_usage`: the one pricing of a period's usage (period close, final usage of
an immediate cancel, GetUsage's preview)."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

from billing.domain.plans import (Aggregation, BillingTiming, IntervalUnit, PlanSpec, PricingModel, Tier,
                                   UsageCharge)
from billing.domain.pricing import PeriodUsage, charge_quantity, price_usage, total, usage_lines

T0, T1 = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)


def _plan() -> PlanSpec:
    return PlanSpec("p", "P", "", "EUR", IntervalUnit.MONTH, 1, D("0"), BillingTiming.IN_ARREARS, 0, (
        UsageCharge("calls", Aggregation.SUM, PricingModel.PER_UNIT, D("0.01"), None, ()),
        UsageCharge("gb", Aggregation.MAX, PricingModel.GRADUATED, None, None,
                    (Tier(D("10"), D("0.333"), D("0")), Tier(None, D("0.111"), D("1")))),
        UsageCharge("users", Aggregation.UNIQUE_COUNT, PricingModel.PER_UNIT, D("2"), None, (), "user")))


def test_every_charge_is_priced_on_its_aggregation_with_a_zero_line_when_unused():
    plan = _plan()
    usage = {"calls": PeriodUsage(D("1234"), 7, D("500"), D("1")), "gb": PeriodUsage(D("40"), 3, D("12.5"), D("2"))}
    priced = price_usage(plan, usage, T0, T1)
    assert [p.charge.metric_code for p in priced] == ["calls", "gb", "users"]
    assert [p.quantity for p in priced] == [D("1234"), D("12.5"), D("0")]
    for p, charge in zip(priced, plan.usage_charges):
        assert p.lines == usage_lines(charge, p.quantity, "EUR", T0, T1)
        assert p.quantity == charge_quantity(charge, usage.get(charge.metric_code, PeriodUsage()))
    assert total(priced[0].lines) == D("12.34")
    assert len(priced[1].lines) == 2 and total(priced[2].lines) == D("0.00")

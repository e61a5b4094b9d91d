"""Late usage charges exactly: a period's total is what its close would have charged had
every event come on time, however its events are split between on time and late lines."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from billing.domain.invoice_assembly import charged_usage, usage_charge_lines
from billing.domain.late_usage import LateUsage, late_usage_line
from billing.domain.plans import Aggregation, BillingTiming, IntervalUnit, PlanSpec, PricingModel, Tier, UsageCharge
from billing.domain.pricing import PeriodUsage, price_usage, total

START = datetime(2026, 9, 1, tzinfo=timezone.utc)
END = datetime(2026, 10, 1, tzinfo=timezone.utc)


def _plan(charge: UsageCharge, currency: str = "EUR") -> PlanSpec:
    return PlanSpec("p", "P", "", currency, IntervalUnit.MONTH, 1, D(0), BillingTiming.IN_ARREARS, 0, (charge,))


def _per_unit(price: str, cap: str | None = None) -> UsageCharge:
    return UsageCharge("calls", Aggregation.SUM, PricingModel.PER_UNIT, D(price), None, (),
                       max_amount=D(cap) if cap else None)


def _sum(quantities: list[D]) -> PeriodUsage:
    return PeriodUsage(sum(quantities, D(0)), len(quantities), max(quantities), quantities[-1]) if quantities \
        else PeriodUsage()


def _on_time(plan: PlanSpec, usage: PeriodUsage) -> D:
    return total(usage_charge_lines(price_usage(plan, {"calls": usage}, START, END), plan.currency, START, END))


def _late(plan: PlanSpec, before: list[D], added: list[D]) -> D:
    late = LateUsage("calls", START, END, len(added), _sum(before), _sum(before + added))
    return late_usage_line(late, plan, trial=False).amount


def test_the_issue_case_333_on_time_and_333_late_at_0_001_charge_0_67():
    plan = _plan(_per_unit("0.001"))
    on_time = _on_time(plan, _sum([D(333)]))
    late = _late(plan, [D(333)], [D(333)])
    # by hand: 333 * 0.001 = 0.333 -> 0.33; all 666 units: 0.666 -> 0.67; the late line 0.67 - 0.33
    assert (on_time, late, on_time + late) == (D("0.33"), D("0.34"), D("0.67"))


def test_three_late_lines_of_333_units_end_at_the_price_of_1332_units():
    plan = _plan(_per_unit("0.001"))
    lines = [_on_time(plan, _sum([D(333)]))]
    seen = [D(333)]
    for _ in range(3):
        lines.append(_late(plan, seen, [D(333)]))
        seen.append(D(333))
    # 0.333 -> 0.33; 0.666 -> 0.67 (+0.34); 0.999 -> 1.00 (+0.33); 1.332 -> 1.33 (+0.33)
    assert lines == [D("0.33"), D("0.34"), D("0.33"), D("0.33")]
    assert sum(lines) == D("1.33")


def test_late_usage_past_the_cap_costs_nothing_and_up_to_it_the_rest():
    plan = _plan(_per_unit("1", cap="10"))
    assert _on_time(plan, _sum([D(8)])) == D(8)
    assert _late(plan, [D(8)], [D(5)]) == D(2)  # 13 capped at 10, 8 charged already
    assert _late(plan, [D(8), D(5)], [D(7)]) == D(0)


_TIERS = (Tier(D(100), D("0.0125"), D(0)), Tier(D(1000), D("0.011"), D("1.25")), Tier(None, D("0.0037"), D(0)))
_CHARGES = [
    _per_unit("0.001"), _per_unit("0.0033"), _per_unit("0.015", cap="7.5"),
    UsageCharge("calls", Aggregation.SUM, PricingModel.GRADUATED, None, None, _TIERS),
    UsageCharge("calls", Aggregation.SUM, PricingModel.VOLUME, None, None, _TIERS),
    UsageCharge("calls", Aggregation.SUM, PricingModel.PACKAGE, D("0.333"), D(7), ()),
    UsageCharge("calls", Aggregation.MAX, PricingModel.GRADUATED, None, None, _TIERS),
    UsageCharge("calls", Aggregation.COUNT, PricingModel.PER_UNIT, D("0.0015"), None, ()),
]


@settings(max_examples=300, deadline=None)
@given(charge=st.sampled_from(_CHARGES), currency=st.sampled_from(["EUR", "JPY", "BHD"]),
       events=st.lists(st.integers(1, 700).map(D), min_size=1, max_size=12), data=st.data())
def test_a_periods_total_does_not_depend_on_how_its_usage_is_split(charge, currency, events, data):
    plan = _plan(charge, currency)
    on_time_count = data.draw(st.integers(0, len(events)), label="on time")
    on_time, late = events[:on_time_count], events[on_time_count:]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(late)), max_size=4), label="late batches"))
    charged = _on_time(plan, _sum(on_time))
    seen = list(on_time)
    for a, b in zip([0] + cuts, cuts + [len(late)]):
        if a == b:
            continue
        charged += _late(plan, seen, late[a:b])
        seen += late[a:b]
    assert charged == charged_usage(plan, "calls", _sum(events), START, END) == _on_time(plan, _sum(events))

"""The pricing models peers have (docs/pricing.md): worked examples, amounts by hand.

Cases marked "from <repository>/<path>" are taken from that peer's public test suite; where
this project's rule differs, the test shows both figures and names the rule.
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from billing.domain.aggregation import PeriodUsage
from billing.domain.money import minor_units, round_money
from billing.domain.periods import to_us
from billing.domain.plans import Aggregation, PackageRounding, PricingModel, Tier, UsageCharge
from billing.domain.pricing import charge_amount, charge_quantity, total, usage_lines
from billing.domain.pricing_models import event_bands, event_fee, weighted_quantity

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
END = datetime(2026, 2, 1, tzinfo=timezone.utc)
SUM, PER_UNIT, PACKAGE = Aggregation.SUM, PricingModel.PER_UNIT, PricingModel.PACKAGE


def charge(model: PricingModel = PER_UNIT, agg: Aggregation = SUM, *, unit_price: str | None = None,
           package_size: str | None = None, tiers: tuple[Tier, ...] = (), **options: object) -> UsageCharge:
    return UsageCharge("m", agg, model, None if unit_price is None else D(unit_price),
                       None if package_size is None else D(package_size), tiers, **options)  # type: ignore[arg-type]


def lines_of(c: UsageCharge, usage: PeriodUsage, currency: str = "USD"):
    return usage_lines(c, charge_quantity(c, usage), currency, START, END, usage)


def amounts(lines) -> list[tuple[str, D]]:
    return [(ln.kind, ln.amount) for ln in lines]


# ------------------------------------------------------------------ free units, package rounding


def test_package_with_free_units_from_lago():
    # from getlago/lago-api spec/services/charges/charge_models/package_service_spec.rb:
    # 121 units, packages of 10 at 1.00 -> 13 packages = 13.00; 10 free units -> 111 -> 12.00.
    c = charge(PACKAGE, unit_price="1.00", package_size="10")
    assert total(lines_of(c, PeriodUsage(quantity_sum=D(121)))) == D("13.00")
    free = charge(PACKAGE, unit_price="1.00", package_size="10", free_units=D(10))
    lines = lines_of(free, PeriodUsage(quantity_sum=D(121)))
    assert amounts(lines) == [("free_units", D("0.00")), ("usage", D("12.00"))]
    assert lines[0].quantity == D(10) and lines[1].quantity == D(12)


def test_package_rounding_down_charges_complete_packages_only():
    # 121 units in packages of 10: up 13 x 1.00 = 13.00, down 12 x 1.00 = 12.00; 9 units: up 1.00, down 0.
    down = charge(PACKAGE, unit_price="1.00", package_size="10", package_rounding=PackageRounding.DOWN)
    assert total(lines_of(down, PeriodUsage(quantity_sum=D(121)))) == D("12.00")
    assert total(lines_of(down, PeriodUsage(quantity_sum=D(9)))) == D("0.00")
    assert "12 complete package(s)" in lines_of(down, PeriodUsage(quantity_sum=D(121)))[0].description


@given(st.decimals(0, 10**6, places=3), st.decimals(0, 10**6, places=3), st.sampled_from(list(PackageRounding)))
def test_package_rounding_is_monotonic(a, b, rounding):
    c = charge(PACKAGE, unit_price="2.50", package_size="7.5", package_rounding=rounding)
    low, high = sorted((a, b))
    assert charge_amount(c, PeriodUsage(quantity_sum=low)) <= charge_amount(c, PeriodUsage(quantity_sum=high))
    up = charge(PACKAGE, unit_price="2.50", package_size="7.5")
    down = charge(PACKAGE, unit_price="2.50", package_size="7.5", package_rounding=PackageRounding.DOWN)
    assert charge_amount(down, PeriodUsage(quantity_sum=a)) <= charge_amount(up, PeriodUsage(quantity_sum=a))


def test_graduated_free_units_shift_the_tiers():
    # 1,500 units, 1,000 free: tiers price 500 -> tier 1 (0, 100] 100 x 0.10 = 10.00, tier 2 400 x 0.05 = 20.00.
    c = charge(PricingModel.GRADUATED, tiers=(Tier(D(100), D("0.10"), D(0)), Tier(None, D("0.05"), D(0))),
               free_units=D(1000))
    assert amounts(lines_of(c, PeriodUsage(quantity_sum=D(1500)))) == [
        ("free_units", D("0.00")), ("usage", D("10.00")), ("usage", D("20.00"))]


def test_free_amount_is_a_line_of_its_own_never_below_zero():
    # 123 x 0.10 = 12.30; 5.00 free -> -5.00, charge 7.30; 20.00 free -> -12.30, charge 0.
    c = charge(unit_price="0.10", free_amount=D("5.00"))
    assert amounts(lines_of(c, PeriodUsage(quantity_sum=D(123)))) == [("usage", D("12.30")), ("free_amount", D("-5.00"))]
    big = charge(unit_price="0.10", free_amount=D("20.00"))
    lines = lines_of(big, PeriodUsage(quantity_sum=D(123)))
    assert amounts(lines) == [("usage", D("12.30")), ("free_amount", D("-12.30"))] and total(lines) == 0
    assert charge_amount(big, PeriodUsage(quantity_sum=D(123))) == 0


# ------------------------------------------------------------------ percentage


def pct(**options: object) -> UsageCharge:
    return charge(PricingModel.PERCENTAGE, **options)


def test_percentage_with_fixed_fee_from_lago():
    # from getlago/lago-api spec/services/charges/charge_models/percentage_service_spec.rb ("free units
    # are not set"): 800 in 4 events, 1.3 % + 2.0 per event = 800 x 0.013 + 4 x 2 = 10.40 + 8.00 = 18.40.
    c = pct(percentage_rate=D("1.3"), fixed_fee_per_event=D("2.0"))
    lines = lines_of(c, PeriodUsage(quantity_sum=D(800), event_count=4))
    assert amounts(lines) == [("usage", D("10.40")), ("usage", D("8.00"))] and total(lines) == D("18.40")
    # ("rate is 0"): only the fixed fees, 4 x 2.0 = 8.00.
    zero = pct(percentage_rate=D(0), fixed_fee_per_event=D("2.0"))
    assert total(lines_of(zero, PeriodUsage(quantity_sum=D(800), event_count=4))) == D("8.00")


def test_percentage_free_units_differ_from_lago():
    # The same spec, free_units_per_total_aggregation 250 and no free events: Lago charges
    # (800 - 250) x 1.3 % + (4 - 2) x 2.0 = 7.15 + 4.00 = 11.15, because the two events whose
    # running total (50, 150) stays within the free 250 pay no fixed fee. Here free units only
    # lower the amount the rate applies to; the fixed fee is per event, every event:
    # 550 x 0.013 + 4 x 2.0 = 7.15 + 8.00 = 15.15 (docs/pricing.md, "free units").
    c = pct(percentage_rate=D("1.3"), fixed_fee_per_event=D("2.0"), free_units=D(250))
    lines = lines_of(c, PeriodUsage(quantity_sum=D(800), event_count=4))
    assert amounts(lines) == [("free_units", D("0.00")), ("usage", D("7.15")), ("usage", D("8.00"))]
    assert total(lines) == D("15.15") != D("11.15")


def test_percentage_per_event_minimum_and_maximum():
    # 2 % + 0.10 per event, each event's fee between 0.50 and 20.00; events 10, 100, 1000, 5000:
    # 10 -> 0.30 -> raised to 0.50; 100 -> 2.10; 1000 -> 20.10 -> 20.00; 5000 -> 100.10 -> 20.00.
    # Lines: rate 100 x 2 % = 2.00; fixed 1 x 0.10; minimum 1 x 0.50; maximum 2 x 20.00 = 40.00.
    c = pct(percentage_rate=D(2), fixed_fee_per_event=D("0.10"), min_fee_per_event=D("0.50"),
            max_fee_per_event=D(20))
    events = [D(10), D(100), D(1000), D(5000)]
    usage = PeriodUsage(quantity_sum=sum(events), event_count=4, bands=event_bands(c, events))
    lines = lines_of(c, usage)
    assert amounts(lines) == [("usage", D("2.00")), ("usage", D("0.10")), ("usage", D("0.50")), ("usage", D("40.00"))]
    assert total(lines) == D("42.60") == sum(event_fee(c, e) for e in events)
    assert [ln.quantity for ln in lines] == [D(100), D(1), D(1), D(2)]


@given(st.lists(st.decimals(0, 10**5, places=2), max_size=30))
def test_per_event_bands_price_each_event_alone(events):
    c = pct(percentage_rate=D("2.9"), fixed_fee_per_event=D("0.30"), min_fee_per_event=D("0.50"),
            max_fee_per_event=D("15"))
    usage = PeriodUsage(quantity_sum=sum(events, D(0)), event_count=len(events), bands=event_bands(c, events))
    assert charge_amount(c, usage) == sum((event_fee(c, e) for e in events), D(0))


# ------------------------------------------------------------------ dynamic


def test_dynamic_price_from_lago():
    # from getlago/lago-api spec/services/charges/charge_models/dynamic_service_spec.rb: 20 units whose
    # events carry 40.2 cents in all -> 0.402, here one line rounded half-even once: 0.40.
    c = charge(PricingModel.DYNAMIC, amount_property="amount")
    lines = lines_of(c, PeriodUsage(quantity_sum=D(20), event_count=3, amount_sum=D("0.402")))
    assert amounts(lines) == [("usage", D("0.40"))] and lines[0].unit_price == D("0.402")
    # ("when aggregation is zero"): nothing charged.
    assert total(lines_of(c, PeriodUsage())) == 0


# ------------------------------------------------------------------ weighted_sum


AUG, SEP = to_us(datetime(2023, 8, 1, tzinfo=timezone.utc)), to_us(datetime(2023, 9, 1, tzinfo=timezone.utc))
HOUR = 3600 * 10**6
LAGO_EVENTS = [(AUG, D(2)), (AUG + HOUR, D(3)), (AUG + 3 * HOUR // 2, D(1)), (AUG + 2 * HOUR, D(-4)),
               (AUG + 4 * HOUR, D(-2)), (AUG + 5 * HOUR, D(10)), (AUG + 11 * HOUR // 2, D(-10))]


def test_weighted_sum_from_lago():
    # from getlago/lago-api spec/services/billable_metrics/aggregations/weighted_sum_service_spec.rb:
    # levels 2 (1 h), 5 (0.5 h), 6 (0.5 h), 2 (2 h), 0 (1 h), 10 (0.5 h), then 0, over August's
    # 2,678,400 s: (7200 + 9000 + 10800 + 14400 + 18000) / 2678400 = 0.0221774193548... (Lago 0.02218).
    assert weighted_quantity(D(0), LAGO_EVENTS, AUG, SEP) == D("0.022177419355")
    # ("recurring", 1000 carried in): 1000.02218; a single event of 1000 at the start: 1000;
    # two events of 3 at the same instant: 6.
    assert weighted_quantity(D(1000), LAGO_EVENTS, AUG, SEP) == D("1000.022177419355")
    assert weighted_quantity(D(0), [(AUG, D(1000))], AUG, SEP) == D(1000)
    assert weighted_quantity(D(0), [(AUG, D(3)), (AUG, D(3))], AUG, SEP) == D(6)


def test_weighted_sum_seats_prorated_across_the_period():
    # January 2026 (31 days): 10 seats carried in, 10 more from the 16th 00:00: 10 x 31/31 + 10 x 16/31
    # = 15.161290322580645... -> 15.161290322581 seats; at 4.00 per seat: 60.645... -> 60.65.
    start, end = to_us(START), to_us(END)
    q = weighted_quantity(D(10), [(to_us(datetime(2026, 1, 16, tzinfo=timezone.utc)), D(10))], start, end)
    assert q == D("15.161290322581")
    c = charge(agg=Aggregation.WEIGHTED_SUM, unit_price="4.00")
    assert amounts(lines_of(c, PeriodUsage(weighted_quantity=q))) == [("usage", D("60.65"))]


def test_weighted_sum_refuses_an_event_outside_the_period():
    with pytest.raises(ValueError, match="outside the period"):
        weighted_quantity(D(0), [(SEP, D(1))], AUG, SEP)


# ------------------------------------------------------------------ flat fee at zero usage


OPENMETER_TIERS = (Tier(D(5), D(0), D(100)), Tier(D(10), D(0), D(50)), Tier(D(15), D(10), D(0)), Tier(None, D(5), D(0)))


def test_zero_usage_flat_fee_from_openmeter():
    # from openmeterio/openmeter openmeter/billing/service/lineservice/pricegraduatedtiered_test.go
    # (TestTieredPriceCalculator): "totals, no usage" = 100 (tier 1's flat fee), 12 -> 170, 22 -> 235.
    c = charge(PricingModel.GRADUATED, tiers=OPENMETER_TIERS, zero_usage_flat_fee=True)
    assert total(lines_of(c, PeriodUsage())) == D("100.00")
    assert total(lines_of(c, PeriodUsage(quantity_sum=D(12)))) == D("170.00")
    assert total(lines_of(c, PeriodUsage(quantity_sum=D(22)))) == D("235.00")


def test_zero_usage_flat_fee_is_not_charged_by_default():
    # The default keeps this project's rule (and Lago's, getlago/lago-api
    # spec/services/charges/charge_models/graduated_service_spec.rb "when aggregation is 0" -> 0):
    # no usage, no tier reached, nothing charged; OpenMeter charges 100 (test above).
    c = charge(PricingModel.GRADUATED, tiers=OPENMETER_TIERS)
    lines = lines_of(c, PeriodUsage())
    assert amounts(lines) == [("usage", D("0.00"))] and "flat fee" not in lines[0].description
    volume = charge(PricingModel.VOLUME, tiers=OPENMETER_TIERS, zero_usage_flat_fee=True)
    assert total(lines_of(volume, PeriodUsage())) == D("100.00")
    assert total(lines_of(charge(PricingModel.VOLUME, tiers=OPENMETER_TIERS), PeriodUsage())) == 0


# ------------------------------------------------------------------ corrections


def test_sum_corrections_never_take_a_period_below_zero():
    # 10 units then a correction of -3: 7 x 0.50 = 3.50; corrections of -15 in all: 0, not -2.50.
    c = charge(unit_price="0.50")
    assert total(lines_of(c, PeriodUsage(quantity_sum=D(7), event_count=2))) == D("3.50")
    assert charge_quantity(c, PeriodUsage(quantity_sum=D(-5))) == 0
    assert total(lines_of(c, PeriodUsage(quantity_sum=D(-5)))) == 0


@given(st.lists(st.decimals(-1000, 1000, places=4), max_size=20))
def test_corrections_never_below_zero(quantities):
    c = charge(PricingModel.GRADUATED, tiers=(Tier(D(100), D("0.10"), D(1)), Tier(None, D("0.05"), D(0))))
    usage = PeriodUsage(quantity_sum=sum(quantities, D(0)), event_count=len(quantities))
    assert charge_quantity(c, usage) >= 0 and charge_amount(c, usage) >= 0 and total(lines_of(c, usage)) >= 0


# ------------------------------------------------------------------ units outside ISO 4217


def test_credits_with_four_decimals():
    # 3 x 0.00015 = 0.00045 credits -> 0.0004 (half-even at 4 decimals); in USD the same is 0.00.
    assert minor_units("credits:4") == 4
    c = charge(unit_price="0.00015")
    assert amounts(lines_of(c, PeriodUsage(quantity_sum=D(3)), "credits:4")) == [("usage", D("0.0004"))]
    assert amounts(lines_of(c, PeriodUsage(quantity_sum=D(3)), "USD")) == [("usage", D("0.00"))]
    assert round_money(D("1.23456"), "tokens:0") == D(1)


def test_a_fee_exactly_at_a_limit_is_priced_as_it_is():
    # 2 % + 0.10: an event of 20 costs 0.50, exactly the minimum; one of 995 costs 20.00, exactly
    # the maximum: neither is raised or lowered (the store's SQL compares with < and > alike).
    c = pct(percentage_rate=D(2), fixed_fee_per_event=D("0.10"), min_fee_per_event=D("0.50"),
            max_fee_per_event=D(20))
    bands = event_bands(c, [D(20), D(995)])
    assert (bands.below_min, bands.within, bands.within_amount, bands.above_max) == (0, 2, D(1015), 0)
    assert event_fee(c, D(20)) == D("0.50") and event_fee(c, D(995)) == D("20.00")


# ------------------------------------------------------------------ late lines


def test_late_lines_of_event_priced_charges_charge_the_difference():
    from billing.domain.late_usage import LateUsage, late_usage_line
    from billing.domain.plans import BillingTiming, IntervalUnit, PlanSpec

    def late(c, before, after):
        plan = PlanSpec("p", "p", "", "USD", IntervalUnit.MONTH, 1, D(0), BillingTiming.IN_ARREARS, 0, (c,))
        return late_usage_line(LateUsage("m", START, END, 1, before, after), plan, trial=False)

    # dynamic: 1.00 billed, a late event priced 0.505: 1.505 - 1.00 -> 0.505 -> 0.50 (half-even).
    dyn = charge(PricingModel.DYNAMIC, amount_property="cost")
    assert late(dyn, PeriodUsage(event_count=1, amount_sum=D("1.00")),
                PeriodUsage(event_count=2, amount_sum=D("1.505"))).amount == D("0.50")
    # percentage per event: 2 % + 0.10 capped at 20.00; a late 5000 costs the maximum, 20.00.
    c = pct(percentage_rate=D(2), fixed_fee_per_event=D("0.10"), max_fee_per_event=D(20))
    before = PeriodUsage(quantity_sum=D(100), event_count=1, bands=event_bands(c, [D(100)]))
    after = PeriodUsage(quantity_sum=D(5100), event_count=2, bands=event_bands(c, [D(100), D(5000)]))
    assert late(c, before, after).amount == D("20.00")
    # a late correction of a sum: 10 billed at 0.50, -4 late: -2.00; -15 late: -5.00, never below the period's 0.
    corr = charge(unit_price="0.50", corrections=True)
    assert late(corr, PeriodUsage(quantity_sum=D(10)), PeriodUsage(quantity_sum=D(6))).amount == D("-2.00")
    assert late(corr, PeriodUsage(quantity_sum=D(10)), PeriodUsage(quantity_sum=D(-5))).amount == D("-5.00")


@given(st.decimals(0, 1000, places=2),
       st.lists(st.tuples(st.integers(0, 10**9 - 1), st.decimals(-50, 50, places=2)), max_size=10))
def test_weighted_sum_lies_between_the_lowest_and_highest_level(level, changes):
    start, end = 0, 10**9
    levels, current = [level], level
    for _, delta in sorted(changes, key=lambda c: c[0]):
        current += delta
        levels.append(current)
    q = weighted_quantity(level, changes, start, end)
    assert max(D(0), min(levels)) - D("1e-12") <= q <= max(D(0), max(levels)) + D("1e-12")
    if not changes:
        assert q == level


def test_blocks_in_a_unit_outside_iso_4217_from_killbill():
    # from killbill/killbill invoice/src/test/java/org/killbill/billing/invoice/usage/
    # TestContiguousIntervalConsumableInArrear.java (testComputeMissingItems): blocks of 100 units at
    # 1 BTC, 130 + 271 = 401 units -> 5 blocks = 5 BTC (a started block counts). Kill Bill bills in
    # BTC; here a unit of its own decimals, "btc:8". Rounding down charges the 4 complete blocks.
    up = charge(PACKAGE, unit_price="1", package_size="100")
    assert amounts(lines_of(up, PeriodUsage(quantity_sum=D(401)), "btc:8")) == [("usage", D("5.00000000"))]
    down = charge(PACKAGE, unit_price="1", package_size="100", package_rounding=PackageRounding.DOWN)
    assert amounts(lines_of(down, PeriodUsage(quantity_sum=D(401)), "btc:8")) == [("usage", D("4.00000000"))]

"""Late usage lines: what the period's usage costs now less what was charged already, by hand."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

from billing.domain.invoicing import PeriodUsage
from billing.domain.late_usage import LateUsage, late_usage_line
from billing.domain.plans import Aggregation, BillingTiming, IntervalUnit, PlanSpec, PricingModel, Tier, UsageCharge

START = datetime(2026, 9, 1, tzinfo=timezone.utc)
END = datetime(2026, 10, 1, tzinfo=timezone.utc)


def _charge(**kw) -> UsageCharge:
    base = dict(metric_code="calls", aggregation=Aggregation.SUM, pricing_model=PricingModel.PER_UNIT,
                unit_price=None, package_size=None, tiers=(), unique_property=None)
    base.update(kw)
    return UsageCharge(**base)


def _line(late: LateUsage, charge: UsageCharge | None, currency: str, *, trial: bool):
    """The line under a plan holding just ``charge`` (None: a plan without the metric)."""
    plan = PlanSpec("p", "P", "", currency, IntervalUnit.MONTH, 1, D(0), BillingTiming.IN_ARREARS, 0,
                    (charge,) if charge is not None else ())
    return late_usage_line(late, plan, trial=trial)


def _late(before: PeriodUsage, after: PeriodUsage, events: int = 1) -> LateUsage:
    return LateUsage("calls", START, END, events, before, after)


def test_per_unit_sum_charges_the_late_quantity_at_the_unit_price():
    ln = _line(_late(PeriodUsage(D(1000), 3), PeriodUsage(D(1601), 5), 2),
                         _charge(unit_price=D("0.0025")), "EUR", trial=False)
    # 601 * 0.0025 = 1.5025 -> 1.50 (half-even, once)
    assert (ln.kind, ln.metric_code, ln.quantity, ln.unit_price, ln.amount) == (
        "late_usage", "calls", D(601), D("0.0025"), D("1.50"))
    assert (ln.period_start, ln.period_end, ln.original_period_start) == (START, END, START)


def test_count_charges_the_late_events():
    ln = _line(_late(PeriodUsage(D(10), 4), PeriodUsage(D(12), 6), 2),
                         _charge(aggregation=Aggregation.COUNT, unit_price=D("0.10")), "EUR", trial=False)
    assert (ln.quantity, ln.amount) == (D(2), D("0.20"))


def test_graduated_prices_the_late_units_in_the_tiers_they_fall_into():
    tiers = (Tier(up_to=D(100), unit_price=D("1.00"), flat_fee=D(0)),
             Tier(up_to=None, unit_price=D("0.50"), flat_fee=D("5.00")))
    # billed 90 (90.00); with 30 late units: 100 * 1.00 + 20 * 0.50 + 5.00 flat = 115.00 -> +25.00
    ln = _line(_late(PeriodUsage(D(90), 1), PeriodUsage(D(120), 2)),
                         _charge(pricing_model=PricingModel.GRADUATED, tiers=tiers), "EUR", trial=False)
    assert (ln.quantity, ln.amount) == (D(30), D("25.00"))
    assert ln.unit_price == D("0.8333333333")  # effective, for the reader


def test_volume_reprices_every_unit_when_the_tier_changes():
    tiers = (Tier(up_to=D(100), unit_price=D("1.00"), flat_fee=D(0)),
             Tier(up_to=None, unit_price=D("0.50"), flat_fee=D(0)))
    # billed 90 * 1.00 = 90.00; all 120 * 0.50 = 60.00: the late usage is a credit of 30.00
    ln = _line(_late(PeriodUsage(D(90), 1), PeriodUsage(D(120), 2)),
                         _charge(pricing_model=PricingModel.VOLUME, tiers=tiers), "EUR", trial=False)
    assert (ln.quantity, ln.amount) == (D(30), D("-30.00"))


def test_package_charges_only_packages_newly_started():
    charge = _charge(pricing_model=PricingModel.PACKAGE, unit_price=D("10"), package_size=D(100))
    ln = _line(_late(PeriodUsage(D(250), 1), PeriodUsage(D(290), 2)), charge, "EUR", trial=False)
    assert (ln.quantity, ln.unit_price, ln.amount) == (D(0), D(10), D("0.00"))  # still 3 packages
    ln = _line(_late(PeriodUsage(D(250), 1), PeriodUsage(D(310), 2)), charge, "EUR", trial=False)
    assert (ln.quantity, ln.amount) == (D(1), D("10.00"))


def test_max_charges_only_a_new_maximum():
    charge = _charge(aggregation=Aggregation.MAX, unit_price=D("2"))
    below = _line(_late(PeriodUsage(D(50), 3, D(40)), PeriodUsage(D(80), 4, D(40))), charge, "EUR",
                            trial=False)
    assert below.amount == D("0.00")
    above = _line(_late(PeriodUsage(D(50), 3, D(40)), PeriodUsage(D(95), 4, D(45))), charge, "EUR",
                            trial=False)
    assert (above.quantity, above.amount) == (D(5), D("10.00"))


def test_unique_count_and_latest():
    unique = _charge(aggregation=Aggregation.UNIQUE_COUNT, unit_price=D("3"), unique_property="user")
    ln = _line(_late(PeriodUsage(unique_count=4), PeriodUsage(unique_count=5)), unique, "EUR", trial=False)
    assert ln.amount == D("3.00")
    latest = _charge(aggregation=Aggregation.LATEST, unit_price=D("1"))
    ln = _line(_late(PeriodUsage(latest_quantity=D(7)), PeriodUsage(latest_quantity=D(5))), latest, "EUR",
                         trial=False)
    assert (ln.quantity, ln.amount) == (D(-2), D("-2.00"))  # the period's latest went down: a credit


def test_trial_and_uncharged_metric_are_free_lines():
    charge = _charge(unit_price=D("1"))
    trial = _line(_late(PeriodUsage(D(0), 0), PeriodUsage(D(9), 1)), charge, "EUR", trial=True)
    assert trial.amount == D("0.00") and "trial" in trial.description
    none = _line(_late(PeriodUsage(D(0), 0), PeriodUsage(D(9), 1)), None, "JPY", trial=False)
    assert none.amount == D("0") and "does not charge" in none.description

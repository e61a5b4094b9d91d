"""Plan validation and storage of the charge options (domain/charge_options.py): every bad
input names its field; the stored form round-trips and a plan stored without them reads back
with the defaults."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from billing.domain.errors import ValidationError
from billing.domain.money import validate_currency
from billing.domain.plan_storage import plan_from_dict, plan_to_dict
from billing.domain.plan_validation import parse_plan
from billing.domain.plans import Aggregation, PackageRounding, PlanInput, PricingModel, TierInput, UsageChargeInput


def plan(*charges: UsageChargeInput, currency: str = "USD", base_fee: str = "0") -> PlanInput:
    return PlanInput("p", "P", currency, "month", 1, base_fee, "in_arrears", 0, charges)


PERCENT = UsageChargeInput("payments", "sum", "percentage", percentage_rate="2.9", fixed_fee_per_event="0.30",
                           min_fee_per_event="0.50", max_fee_per_event="15")
DYNAMIC = UsageChargeInput("llm", "count", "dynamic", amount_property="cost")
SEATS = UsageChargeInput("seats", "weighted_sum", "per_unit", unit_price="4", free_units="2", free_amount="1.50")
PACKAGE_DOWN = UsageChargeInput("sms", "sum", "package", unit_price="1", package_size="10", package_rounding="down")
TIERED = UsageChargeInput("gb", "sum", "graduated", tiers=(TierInput("5", "0", "100"), TierInput("", "1")),
                          zero_usage_flat_fee=True)


def test_every_option_parses_and_round_trips():
    spec = parse_plan(plan(PERCENT, DYNAMIC, SEATS, PACKAGE_DOWN, TIERED))
    pct, dyn, seats, pkg, tiered = spec.usage_charges
    assert (pct.pricing_model, pct.percentage_rate, pct.fixed_fee_per_event, pct.min_fee_per_event,
            pct.max_fee_per_event) == (PricingModel.PERCENTAGE, D("2.9"), D("0.30"), D("0.50"), D(15))
    assert pct.per_event and not seats.per_event
    assert (dyn.pricing_model, dyn.amount_property) == (PricingModel.DYNAMIC, "cost")
    assert (seats.aggregation, seats.free_units, seats.free_amount) == (Aggregation.WEIGHTED_SUM, D(2), D("1.50"))
    assert pkg.package_rounding is PackageRounding.DOWN and tiered.zero_usage_flat_fee
    assert plan_from_dict(plan_to_dict(spec)) == spec


def test_a_plan_stored_without_options_reads_with_the_defaults():
    spec = parse_plan(plan(UsageChargeInput("api", "sum", "package", unit_price="1", package_size="10")))
    stored = plan_to_dict(spec)
    assert set(stored["usage_charges"][0]) == {"metric_code", "aggregation", "pricing_model", "unit_price",
                                                "package_size", "tiers", "unique_property"}
    charge = plan_from_dict(stored).usage_charges[0]
    assert charge.package_rounding is PackageRounding.UP and charge.free_units is None
    assert not charge.zero_usage_flat_fee and charge.percentage_rate is None


def test_credits_unit_plan():
    spec = parse_plan(plan(UsageChargeInput("tokens", "sum", "per_unit", unit_price="0.00015"),
                           currency="credits:4", base_fee="10.1234"))
    assert spec.currency == "credits:4" and spec.base_fee == D("10.1234")
    assert plan_from_dict(plan_to_dict(spec)) == spec
    assert validate_currency("credits:12") == "credits:12"


@pytest.mark.parametrize("code", ["credits", "Credits:4", "credits:13", "credits:-1", ":4", "cr edits:2"])
def test_bad_units_are_refused(code):
    with pytest.raises(ValidationError) as e:
        validate_currency(code)
    assert e.value.violations[0][0] == "currency"


def test_credits_amounts_are_limited_to_their_decimals():
    with pytest.raises(ValidationError) as e:
        parse_plan(plan(currency="credits:4", base_fee="1.00001"))
    assert list(e.value.violations) == [("base_fee", "has more than 4 decimal places")]


BAD = [
    (UsageChargeInput("m", "count", "percentage", percentage_rate="1"), "usage_charges[0].aggregation", "must be sum"),
    (UsageChargeInput("m", "sum", "percentage"), "usage_charges[0].percentage_rate", "is required"),
    (UsageChargeInput("m", "sum", "percentage", percentage_rate="-1"), "usage_charges[0].percentage_rate",
     "must not be negative"),
    (UsageChargeInput("m", "sum", "percentage", percentage_rate="1", min_fee_per_event="5", max_fee_per_event="1"),
     "usage_charges[0].min_fee_per_event", "must not be above max_fee_per_event (1)"),
    (UsageChargeInput("m", "sum", "percentage", percentage_rate="1", max_fee_per_event="1", free_units="3"),
     "usage_charges[0].free_units", "per-event minimum or maximum"),
    (UsageChargeInput("m", "sum", "percentage", percentage_rate="1", unit_price="1"), "usage_charges[0].unit_price",
     "must be empty"),
    (UsageChargeInput("m", "sum", "per_unit", unit_price="1", percentage_rate="1"),
     "usage_charges[0].percentage_rate", "is only for pricing model percentage"),
    (UsageChargeInput("m", "sum", "dynamic"), "usage_charges[0].amount_property", "is required"),
    (UsageChargeInput("m", "sum", "dynamic", amount_property="1x"), "usage_charges[0].amount_property", "must be"),
    (UsageChargeInput("m", "max", "dynamic", amount_property="cost"), "usage_charges[0].aggregation", "sum or count"),
    (UsageChargeInput("m", "sum", "dynamic", amount_property="cost", free_units="1"), "usage_charges[0].free_units",
     "use free_amount"),
    (UsageChargeInput("m", "sum", "per_unit", unit_price="1", amount_property="cost"),
     "usage_charges[0].amount_property", "is only for pricing model dynamic"),
    (UsageChargeInput("m", "weighted_sum", "percentage", percentage_rate="1"), "usage_charges[0].aggregation",
     "weighted_sum prices"),
    (UsageChargeInput("m", "sum", "per_unit", unit_price="1", package_rounding="down"),
     "usage_charges[0].package_rounding", "is only for pricing model package"),
    (UsageChargeInput("m", "sum", "package", unit_price="1", package_size="1", package_rounding="half"),
     "usage_charges[0].package_rounding", "must be up or down"),
    (UsageChargeInput("m", "sum", "per_unit", unit_price="1", zero_usage_flat_fee=True),
     "usage_charges[0].zero_usage_flat_fee", "graduated and volume"),
    (UsageChargeInput("m", "sum", "per_unit", unit_price="1", free_amount="0.001"), "usage_charges[0].free_amount",
     "more than 2 decimal places"),
    (UsageChargeInput("m", "sum", "per_unit", unit_price="1", free_units="-1"), "usage_charges[0].free_units",
     "must not be negative"),
]


@pytest.mark.parametrize(("charge", "field", "message"), BAD)
def test_bad_options_name_their_field(charge, field, message):
    with pytest.raises(ValidationError) as e:
        parse_plan(plan(charge))
    [(got_field, got_message)] = e.value.violations
    assert got_field == field and message in got_message

"""billing.domain.plans: validation (field paths), JSON round trip, upgrade comparison."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal as D
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from billing.domain.errors import ValidationError
from billing.domain.plans import (
    NOMINAL_SECONDS,
    Aggregation,
    BillingTiming,
    IntervalUnit,
    PlanInput,
    PlanSpec,
    PricingModel,
    Tier,
    TierInput,
    UsageCharge,
    UsageChargeInput,
    base_fee_per_second,
    is_upgrade,
)
from billing.domain.plan_storage import plan_from_dict, plan_to_dict
from billing.domain.plan_validation import parse_plan


def _plan(**overrides) -> PlanInput:
    base = PlanInput(
        code="pro-monthly",
        name="Pro (monthly)",
        currency="USD",
        interval="month",
        interval_count=1,
        base_fee="49.00",
        billing_timing="in_advance",
        trial_days=14,
        usage_charges=(),
        description="",
    )
    return replace(base, **overrides)


PER_UNIT = UsageChargeInput("api_calls", "sum", "per_unit", unit_price="0.000125")
PACKAGE = UsageChargeInput("sms", "count", "package", unit_price="5", package_size="100")
GRADUATED = UsageChargeInput(
    "storage.gb",
    "max",
    "graduated",
    tiers=(
        TierInput("10", "0"),
        TierInput("100", "0.10", "1.50"),
        TierInput("", "0.05"),
    ),
)
VOLUME = UsageChargeInput(
    "seats", "unique_count", "volume", tiers=(TierInput("5", "10"), TierInput("", "8")), unique_property="user_id"
)
LATEST = UsageChargeInput("gpus", "latest", "per_unit", unit_price="2")


def _charge(**overrides) -> UsageChargeInput:
    return replace(GRADUATED, **overrides)


def _tiers(*tiers: TierInput) -> UsageChargeInput:
    return replace(GRADUATED, tiers=tiers)


# --------------------------------------------------------------------- enums


def test_enum_values():
    assert [m.value for m in IntervalUnit] == ["day", "week", "month", "year"]
    assert [m.value for m in BillingTiming] == ["in_advance", "in_arrears"]
    assert [m.value for m in Aggregation] == ["sum", "count", "max", "unique_count", "latest", "weighted_sum"]
    assert [m.value for m in PricingModel] == ["per_unit", "package", "graduated", "volume", "percentage",
                                               "dynamic"]
    assert IntervalUnit.MONTH == "month"


# --------------------------------------------------------------------- valid plans


def test_parse_full_plan():
    spec = parse_plan(
        _plan(
            description="All the things.\nLine two.",
            usage_charges=(PER_UNIT, PACKAGE, GRADUATED, VOLUME, LATEST),
        )
    )
    assert spec.code == "pro-monthly"
    assert spec.interval is IntervalUnit.MONTH
    assert spec.billing_timing is BillingTiming.IN_ADVANCE
    assert spec.base_fee == D("49.00")
    assert spec.trial_days == 14
    pu, pk, gr, vo, la = spec.usage_charges
    assert pu == UsageCharge("api_calls", Aggregation.SUM, PricingModel.PER_UNIT, D("0.000125"), None, ())
    assert pk == UsageCharge("sms", Aggregation.COUNT, PricingModel.PACKAGE, D("5"), D("100"), ())
    assert gr.unit_price is None and gr.package_size is None
    assert gr.tiers == (
        Tier(D("10"), D("0"), D("0")),
        Tier(D("100"), D("0.10"), D("1.50")),
        Tier(None, D("0.05"), D("0")),
    )
    assert vo.aggregation is Aggregation.UNIQUE_COUNT
    assert la.aggregation is Aggregation.LATEST
    assert isinstance(spec.usage_charges, tuple)
    with pytest.raises(AttributeError):
        spec.code = "other"  # frozen


@pytest.mark.parametrize(
    "overrides",
    [
        {"code": "a"},
        {"code": "0"},
        {"code": "a" * 64},
        {"code": "plan_v2.eu-west"},
        {"name": "x" * 200},
        {"name": "Ünïcødé plan 🚀"},
        {"description": "d" * 2000},
        {"description": "tabs\tand\r\nnewlines"},
        {"currency": "JPY", "base_fee": "5000"},
        {"currency": "BHD", "base_fee": "1.250"},
        {"currency": "USD", "base_fee": "9.990"},  # trailing zero: still whole cents
        {"base_fee": "0"},
        {"base_fee": "999999999999999.99"},
        {"interval": "day", "interval_count": 366},
        {"interval": "week", "interval_count": 52},
        {"interval": "month", "interval_count": 24},
        {"interval": "year", "interval_count": 10},
        {"billing_timing": "in_arrears"},
        {"trial_days": 0},
        {"trial_days": 730},
        {"usage_charges": tuple(UsageChargeInput(f"m{i}", "sum", "per_unit", "1") for i in range(50))},
        {"usage_charges": (_tiers(*[TierInput(str(i + 1), "1") for i in range(49)], TierInput("", "1")),)},
        {"usage_charges": (_tiers(TierInput("", "1")),)},  # a single unbounded tier
        {"usage_charges": (_tiers(TierInput("0.5", "1"), TierInput("", "1")),)},
        {"usage_charges": (replace(PACKAGE, package_size="0.5", unit_price="0"),)},
    ],
)
def test_valid_variants(overrides):
    assert isinstance(parse_plan(_plan(**overrides)), PlanSpec)


# --------------------------------------------------------------------- invalid plans: field paths

UC0 = "usage_charges[0]"

INVALID = [
    # code
    ({"code": ""}, "code", "is required"),
    ({"code": "a" * 65}, "code", "at most 64"),
    ({"code": "Pro"}, "code", "lowercase"),
    ({"code": "-pro"}, "code", "lowercase"),
    ({"code": "_pro"}, "code", "lowercase"),
    ({"code": ".pro"}, "code", "lowercase"),
    ({"code": "pro plan"}, "code", "lowercase"),
    ({"code": "pro/plan"}, "code", "lowercase"),
    ({"code": "próo"}, "code", "lowercase"),
    ({"code": None}, "code", "is required"),
    ({"code": 5}, "code", "string"),
    # name
    ({"name": ""}, "name", "is required"),
    ({"name": "   "}, "name", "blank"),
    ({"name": "x" * 201}, "name", "at most 200"),
    ({"name": "bad\x00name"}, "name", "control"),
    ({"name": "bad\nname"}, "name", "control"),
    ({"name": "bad\x7fname"}, "name", "control"),
    # description
    ({"description": "d" * 2001}, "description", "at most 2000"),
    ({"description": "nul\x00"}, "description", "control"),
    ({"description": "bell\x07"}, "description", "control"),
    # currency
    ({"currency": ""}, "currency", "is required"),
    ({"currency": "usd"}, "currency", "uppercase"),
    ({"currency": "ABC"}, "currency", "ISO 4217"),
    ({"currency": "XAU"}, "currency", "ISO 4217"),
    # interval
    ({"interval": ""}, "interval", "is required"),
    ({"interval": "Month"}, "interval", "must be one of day, week, month, year"),
    ({"interval": "monthly"}, "interval", "must be one of"),
    # interval_count
    ({"interval": "day", "interval_count": 367}, "interval_count", "between 1 and 366"),
    ({"interval": "week", "interval_count": 53}, "interval_count", "between 1 and 52"),
    ({"interval": "month", "interval_count": 25}, "interval_count", "between 1 and 24"),
    ({"interval": "year", "interval_count": 11}, "interval_count", "between 1 and 10"),
    ({"interval_count": 0}, "interval_count", "between 1"),
    ({"interval_count": -1}, "interval_count", "between 1"),
    ({"interval_count": "1"}, "interval_count", "integer"),
    ({"interval_count": True}, "interval_count", "integer"),
    # base_fee
    ({"base_fee": ""}, "base_fee", "is required"),
    ({"base_fee": "-1"}, "base_fee", "negative"),
    ({"base_fee": "1e2"}, "base_fee", "plain decimal"),
    ({"base_fee": "NaN"}, "base_fee", "plain decimal"),
    ({"base_fee": "9.999"}, "base_fee", "more than 2 decimal places"),
    ({"currency": "JPY", "base_fee": "10.5"}, "base_fee", "whole number"),
    ({"currency": "BHD", "base_fee": "1.0005"}, "base_fee", "more than 3 decimal places"),
    ({"base_fee": "1000000000000000"}, "base_fee", "more than 15 digits"),
    # billing_timing
    ({"billing_timing": ""}, "billing_timing", "is required"),
    ({"billing_timing": "advance"}, "billing_timing", "in_advance, in_arrears"),
    # trial_days
    ({"trial_days": -1}, "trial_days", "between 0 and 730"),
    ({"trial_days": 731}, "trial_days", "between 0 and 730"),
    ({"trial_days": 1.5}, "trial_days", "integer"),
    # usage_charges: list
    (
        {"usage_charges": tuple(UsageChargeInput(f"m{i}", "sum", "per_unit", "1") for i in range(51))},
        "usage_charges",
        "at most 50",
    ),
    (
        {"usage_charges": (PER_UNIT, PACKAGE, replace(PACKAGE, metric_code="api_calls"))},
        "usage_charges[2].metric_code",
        "duplicates usage_charges[0].metric_code",
    ),
    # metric_code
    ({"usage_charges": (_charge(metric_code=""),)}, f"{UC0}.metric_code", "is required"),
    ({"usage_charges": (_charge(metric_code="API"),)}, f"{UC0}.metric_code", "lowercase"),
    ({"usage_charges": (_charge(metric_code="a" * 65),)}, f"{UC0}.metric_code", "at most 64"),
    # aggregation / pricing_model
    ({"usage_charges": (_charge(aggregation=""),)}, f"{UC0}.aggregation", "is required"),
    ({"usage_charges": (_charge(aggregation="avg"),)}, f"{UC0}.aggregation", "must be one of"),
    ({"usage_charges": (_charge(pricing_model=""),)}, f"{UC0}.pricing_model", "is required"),
    ({"usage_charges": (_charge(pricing_model="tiered"),)}, f"{UC0}.pricing_model", "must be one of"),
    # per_unit
    ({"usage_charges": (replace(PER_UNIT, unit_price=""),)}, f"{UC0}.unit_price", "is required"),
    ({"usage_charges": (replace(PER_UNIT, unit_price="-1"),)}, f"{UC0}.unit_price", "negative"),
    (
        {"usage_charges": (replace(PER_UNIT, unit_price="0.0000000000001"),)},
        f"{UC0}.unit_price",
        "more than 12 decimal places",
    ),
    ({"usage_charges": (replace(PER_UNIT, package_size="10"),)}, f"{UC0}.package_size", "must be empty"),
    ({"usage_charges": (replace(PER_UNIT, tiers=(TierInput("", "1"),)),)}, f"{UC0}.tiers", "must be empty"),
    # package
    ({"usage_charges": (replace(PACKAGE, unit_price=""),)}, f"{UC0}.unit_price", "is required"),
    ({"usage_charges": (replace(PACKAGE, package_size=""),)}, f"{UC0}.package_size", "is required"),
    ({"usage_charges": (replace(PACKAGE, package_size="0"),)}, f"{UC0}.package_size", "greater than zero"),
    ({"usage_charges": (replace(PACKAGE, package_size="-5"),)}, f"{UC0}.package_size", "negative"),
    ({"usage_charges": (replace(PACKAGE, tiers=(TierInput("", "1"),)),)}, f"{UC0}.tiers", "must be empty"),
    # graduated / volume
    ({"usage_charges": (_charge(tiers=()),)}, f"{UC0}.tiers", "at least 1 tier"),
    ({"usage_charges": (replace(VOLUME, tiers=()),)}, f"{UC0}.tiers", "at least 1 tier"),
    (
        {"usage_charges": (_tiers(*[TierInput(str(i + 1), "1") for i in range(50)], TierInput("", "1")),)},
        f"{UC0}.tiers",
        "at most 50",
    ),
    ({"usage_charges": (_charge(unit_price="1"),)}, f"{UC0}.unit_price", "must be empty"),
    ({"usage_charges": (_charge(package_size="1"),)}, f"{UC0}.package_size", "must be empty"),
    (
        {"usage_charges": (_tiers(TierInput("10", "1"), TierInput("20", "1")),)},
        f"{UC0}.tiers[1].up_to",
        "last tier is unbounded",
    ),
    (
        {"usage_charges": (_tiers(TierInput("", "1"), TierInput("", "1")),)},
        f"{UC0}.tiers[0].up_to",
        "only the last tier may be unbounded",
    ),
    (
        {"usage_charges": (_tiers(TierInput("10", "1"), TierInput("10", "1"), TierInput("", "1")),)},
        f"{UC0}.tiers[1].up_to",
        "greater than usage_charges[0].tiers[0].up_to (10)",
    ),
    (
        {"usage_charges": (_tiers(TierInput("10", "1"), TierInput("5", "1"), TierInput("", "1")),)},
        f"{UC0}.tiers[1].up_to",
        "greater than",
    ),
    ({"usage_charges": (_tiers(TierInput("0", "1"), TierInput("", "1")),)}, f"{UC0}.tiers[0].up_to", "greater than zero"),
    ({"usage_charges": (_tiers(TierInput("-1", "1"), TierInput("", "1")),)}, f"{UC0}.tiers[0].up_to", "negative"),
    ({"usage_charges": (_tiers(TierInput("1e3", "1"), TierInput("", "1")),)}, f"{UC0}.tiers[0].up_to", "plain decimal"),
    ({"usage_charges": (_tiers(TierInput("10", ""), TierInput("", "1")),)}, f"{UC0}.tiers[0].unit_price", "is required"),
    ({"usage_charges": (_tiers(TierInput("10", "1"), TierInput("", "-1")),)}, f"{UC0}.tiers[1].unit_price", "negative"),
    ({"usage_charges": (_tiers(TierInput("10", "1", "-2"), TierInput("", "1")),)}, f"{UC0}.tiers[0].flat_fee", "negative"),
    (
        {"usage_charges": (_tiers(TierInput("10", "1"), TierInput("", "1", "0.001")),)},
        f"{UC0}.tiers[1].flat_fee",
        "more than 2 decimal places",
    ),
    # later charges carry their own index
    (
        {"usage_charges": (PER_UNIT, replace(VOLUME, tiers=(TierInput("5", "10"), TierInput("4", "1"), TierInput("", "1"))))},
        "usage_charges[1].tiers[1].up_to",
        "greater than usage_charges[1].tiers[0].up_to (5)",
    ),
]


@pytest.mark.parametrize(
    "overrides, field, fragment", INVALID, ids=[f"{f}:{m}" for _, f, m in INVALID]
)
def test_invalid_input_names_the_field(overrides, field, fragment):
    with pytest.raises(ValidationError) as e:
        parse_plan(_plan(**overrides))
    assert e.value.field == field
    assert fragment in e.value.message, e.value.message
    assert str(e.value) == f"{field}: {e.value.message}"


# --------------------------------------------------------------------- dict round trip


def test_plan_to_dict_is_json_safe_and_round_trips():
    spec = parse_plan(
        _plan(
            description="desc",
            base_fee="49.90",
            usage_charges=(PER_UNIT, PACKAGE, GRADUATED, VOLUME, LATEST),
        )
    )
    d = plan_to_dict(spec)
    text = json.dumps(d)
    assert "49.90" in text
    d2 = json.loads(text)
    assert d2 == d
    assert d["interval"] == "month"
    assert d["base_fee"] == "49.90"
    assert d["usage_charges"][0]["unit_price"] == "0.000125"
    assert d["usage_charges"][0]["package_size"] is None
    assert d["usage_charges"][2]["unit_price"] is None
    assert d["usage_charges"][2]["tiers"][2] == {"up_to": None, "unit_price": "0.05", "flat_fee": "0"}
    back = plan_from_dict(d2)
    assert back == spec
    # exact, digit for digit
    assert str(back.base_fee) == "49.90"
    assert back.usage_charges[2].tiers[1].unit_price.as_tuple() == D("0.10").as_tuple()
    assert plan_to_dict(back) == d


def test_tiny_prices_are_never_written_with_exponents():
    spec = parse_plan(_plan(usage_charges=(replace(PER_UNIT, unit_price="0.000000000001"),)))
    d = plan_to_dict(spec)
    assert d["usage_charges"][0]["unit_price"] == "0.000000000001"
    assert plan_from_dict(d) == spec


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("code"), "code"),
        (lambda d: d.update(interval="fortnight"), "interval"),
        (lambda d: d.update(base_fee=49.9), "base_fee"),
        (lambda d: d.update(base_fee="4.99e1"), "base_fee"),
        (lambda d: d.update(trial_days="14"), "trial_days"),
        (lambda d: d.update(currency="???"), "currency"),
        (lambda d: d.update(usage_charges={}), "usage_charges"),
        (lambda d: d["usage_charges"][0].update(aggregation="avg"), "usage_charges[0].aggregation"),
        (lambda d: d["usage_charges"][1]["tiers"][0].pop("flat_fee"), "usage_charges[1].tiers[0].flat_fee"),
        (lambda d: d["usage_charges"][1]["tiers"][0].update(up_to=10), "usage_charges[1].tiers[0].up_to"),
    ],
)
def test_plan_from_dict_rejects_malformed(mutate, field):
    d = plan_to_dict(parse_plan(_plan(usage_charges=(PER_UNIT, GRADUATED))))
    mutate(d)
    with pytest.raises(ValidationError) as e:
        plan_from_dict(d)
    assert e.value.field == field


def test_plan_from_dict_accepts_stored_plan_in_withdrawn_currency():
    d = plan_to_dict(parse_plan(_plan(currency="EUR")))
    d["currency"] = "HRK"
    assert plan_from_dict(d).currency == "HRK"


_code = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
_price = st.decimals(min_value=0, max_value=10**6, places=12).map(lambda x: format(x, "f"))
_money = st.decimals(min_value=0, max_value=10**6, places=2).map(lambda x: format(x, "f"))


@st.composite
def _plan_inputs(draw):
    n_charges = draw(st.integers(0, 4))
    codes = draw(st.lists(_code, min_size=n_charges, max_size=n_charges, unique=True))
    charges = []
    for code in codes:
        model = draw(st.sampled_from([PricingModel.PER_UNIT, PricingModel.PACKAGE, PricingModel.GRADUATED,
                                      PricingModel.VOLUME]))
        agg = draw(st.sampled_from(list(Aggregation))).value
        prop = "user_id" if agg == "unique_count" else ""
        if model is PricingModel.PER_UNIT:
            charges.append(UsageChargeInput(code, agg, model.value, unit_price=draw(_price), unique_property=prop))
        elif model is PricingModel.PACKAGE:
            size = draw(st.integers(1, 10**6))
            charges.append(UsageChargeInput(code, agg, model.value, unit_price=draw(_price), package_size=str(size),
                                            unique_property=prop))
        else:
            bounds = sorted(draw(st.sets(st.integers(1, 10**9), max_size=5)))
            tiers = [TierInput(str(b), draw(_price), draw(st.sampled_from(["", "0", "2.50"]))) for b in bounds]
            tiers.append(TierInput("", draw(_price), draw(_money)))
            charges.append(UsageChargeInput(code, agg, model.value, tiers=tuple(tiers), unique_property=prop))
    unit = draw(st.sampled_from(list(IntervalUnit)))
    return PlanInput(
        code=draw(_code),
        name=draw(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(str.strip)),
        currency="USD",
        interval=unit.value,
        interval_count=draw(st.integers(1, {"day": 366, "week": 52, "month": 24, "year": 10}[unit.value])),
        base_fee=draw(_money),
        billing_timing=draw(st.sampled_from(["in_advance", "in_arrears"])),
        trial_days=draw(st.integers(0, 730)),
        usage_charges=tuple(charges),
        description=draw(
            st.text(st.one_of(st.sampled_from("\n\r\t"), st.characters(blacklist_categories=("Cc", "Cs"))), max_size=50)
        ),
    )


@given(_plan_inputs())
def test_round_trip_property(inp):
    spec = parse_plan(inp)
    d = plan_to_dict(spec)
    back = plan_from_dict(json.loads(json.dumps(d)))
    assert back == spec
    assert plan_to_dict(back) == d


# --------------------------------------------------------------------- upgrades


def _spec(base_fee: str, interval: str = "month", count: int = 1, currency: str = "USD") -> PlanSpec:
    return parse_plan(_plan(base_fee=base_fee, interval=interval, interval_count=count, currency=currency))


def test_nominal_seconds():
    assert NOMINAL_SECONDS[IntervalUnit.DAY] == 86_400
    assert NOMINAL_SECONDS[IntervalUnit.WEEK] == 7 * 86_400
    assert NOMINAL_SECONDS[IntervalUnit.YEAR] == 31_556_952 == D("365.2425") * 86_400
    assert NOMINAL_SECONDS[IntervalUnit.MONTH] == 2_629_746 == D("30.436875") * 86_400
    assert NOMINAL_SECONDS[IntervalUnit.MONTH] * 12 == NOMINAL_SECONDS[IntervalUnit.YEAR]


def test_base_fee_per_second_is_exact():
    assert base_fee_per_second(_spec("86400", "day")) == Fraction(1)
    assert base_fee_per_second(_spec("10", "month", 3)) == Fraction(10, 3 * 2_629_746)
    assert isinstance(base_fee_per_second(_spec("9.99")), Fraction)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (("10",), ("20",), True),
        (("20",), ("10",), False),
        (("10",), ("10",), False),  # same rate: not an upgrade
        (("10", "month"), ("100", "year"), False),  # yearly discount
        (("10", "month"), ("120", "year"), False),  # exactly 12x: same rate
        (("10", "month"), ("120.01", "year"), True),
        (("10", "month"), ("3", "week"), True),
        (("10", "month"), ("20", "month", 2), False),  # same rate over two months
        (("10", "month"), ("20.01", "month", 2), True),
        (("0",), ("0.01", "year"), True),
        (("1", "day"), ("7", "week"), False),
        (("1", "day"), ("7.01", "week"), True),
    ],
)
def test_is_upgrade(old, new, expected):
    assert is_upgrade(_spec(*old), _spec(*new)) is expected


def test_is_upgrade_needs_same_currency():
    with pytest.raises(ValueError):
        is_upgrade(_spec("10"), _spec("10", currency="EUR"))


@pytest.mark.parametrize("aggregation, prop, message", [
    ("unique_count", "", "is required"),
    ("unique_count", "bad property!", "must be"),
    ("sum", "user_id", "only for aggregation 'unique_count'"),
])
def test_unique_property_rules(aggregation, prop, message):
    inp = _plan(usage_charges=(UsageChargeInput("seats", aggregation, "per_unit", unit_price="1",
                                                unique_property=prop),))
    with pytest.raises(ValidationError) as err:
        parse_plan(inp)
    assert err.value.field == "usage_charges[0].unique_property" and message in err.value.message

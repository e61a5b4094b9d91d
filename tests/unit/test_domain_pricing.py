"""billing.domain.pricing: usage pricing models, invoice lines, aggregation, totals.

Every expected figure below was worked out by hand; the arithmetic is in the comments.
Rounding is money.round_money: half-even to the currency's minor unit, once per line.
"""

from __future__ import annotations

import ast
import pathlib
from datetime import datetime, timezone
from decimal import Context, Decimal as D, Inexact, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from billing.domain import pricing
from billing.domain.money import minor_units, round_money, to_minor_units
from billing.domain.plans import (
    Aggregation,
    BillingTiming,
    IntervalUnit,
    PlanSpec,
    PricingModel,
    Tier,
    UsageCharge,
)
from billing.domain.pricing import (
    Line,
    aggregate,
    base_fee_line,
    total,
    usage_amount,
    usage_lines,
)

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
END = datetime(2026, 2, 1, tzinfo=timezone.utc)


def per_unit(price: str, metric: str = "api_calls") -> UsageCharge:
    return UsageCharge(metric, Aggregation.SUM, PricingModel.PER_UNIT, D(price), None, ())


def package(price: str, size: str, metric: str = "storage") -> UsageCharge:
    return UsageCharge(metric, Aggregation.SUM, PricingModel.PACKAGE, D(price), D(size), ())


def tier(up_to: str | None, price: str, flat: str = "0") -> Tier:
    return Tier(None if up_to is None else D(up_to), D(price), D(flat))


def tiered(model: PricingModel, *tiers: Tier, metric: str = "seats") -> UsageCharge:
    return UsageCharge(metric, Aggregation.SUM, model, None, None, tuple(tiers))


# tiers [(up to 10, 0), (up to 100, 0.10, flat 1.50), (unbounded, 0.05)]
GRADUATED = tiered(
    PricingModel.GRADUATED, tier("10", "0"), tier("100", "0.10", "1.50"), tier(None, "0.05")
)
# tiers [(up to 5, 10), (unbounded, 8)]
VOLUME = tiered(PricingModel.VOLUME, tier("5", "10"), tier(None, "8"))


def lines(charge, q, currency="USD"):
    return usage_lines(charge, D(q), currency, START, END)


def amounts(ls):
    return [ln.amount for ln in ls]


def same(a: D, b: D) -> bool:
    """Equal in value AND in digits shown (exponent), e.g. 3.08 not 3.080."""
    return a == b and a.as_tuple().exponent == b.as_tuple().exponent


# --------------------------------------------------------------------- per_unit


def test_per_unit_rounds_half_even_once():
    # 1234 calls * 0.0025 = 3.0850 exactly; half-even to cents: 3.08|50 -> 8 is even -> 3.08
    assert usage_amount(per_unit("0.0025"), D(1234)) == D("3.085")
    (ln,) = lines(per_unit("0.0025"), "1234")
    assert same(ln.amount, D("3.08"))
    assert ln == Line(
        kind="usage",
        description="api_calls: 1234 at 0.0025",
        metric_code="api_calls",
        quantity=D(1234),
        unit_price=D("0.0025"),
        amount=D("3.08"),
        period_start=START,
        period_end=END,
        fraction=None,
        tier=None,
    )
    # 1238 * 0.0025 = 3.0950 -> 3.09|50, 9 odd -> rounds up to 3.10
    assert amounts(lines(per_unit("0.0025"), "1238")) == [D("3.10")]


def test_per_unit_zero_quantity_is_one_zero_line():
    (ln,) = lines(per_unit("0.0025"), "0")
    assert same(ln.amount, D("0.00")) and ln.quantity == 0


def test_per_unit_twelve_decimal_price_is_exact():
    # 999,999,999,999,999 units * 0.000000000001 = 999.999999999999 exactly
    # (28-digit default decimal precision would still be fine here, but the
    # result must never be rounded before the line): -> 1000.00
    q = D("999999999999999.999999999999")
    exact = usage_amount(per_unit("0.000000000001"), q)
    assert exact == D("999.999999999999999999999999")
    assert amounts(lines(per_unit("0.000000000001"), q)) == [D("1000.00")]


def test_exact_beyond_default_decimal_precision():
    # 15+12 digit quantity times a 12-decimal price needs more than 28 digits;
    # the product must be exact (the default context would round it).
    q = D("123456789012345.123456789012")
    price = D("0.123456789012")
    exact = usage_amount(per_unit(str(price)), q)
    assert Fraction(exact) == Fraction(q) * Fraction(price)


# --------------------------------------------------------------------- package


def test_package_charges_every_started_package():
    charge = package("5.00", "100")
    # 250 units / 100 = 2.5 -> 3 started packages * 5.00 = 15.00
    assert usage_amount(charge, D(250)) == D("15.00")
    (ln,) = lines(charge, "250")
    assert (ln.quantity, ln.unit_price, ln.amount) == (D(3), D("5.00"), D("15.00"))
    assert ln.description == "storage: 250 in 3 package(s) of 100 at 5.00"
    # 0 units -> 0 packages -> 0.00
    assert usage_amount(charge, D(0)) == 0
    (zero,) = lines(charge, "0")
    assert (zero.quantity, zero.amount) == (D(0), D("0.00"))
    # exactly 200 -> 2 packages -> 10.00; 200.0001 -> 3 packages -> 15.00; 1 -> 1 -> 5.00
    assert amounts(lines(charge, "200")) == [D("10.00")]
    assert amounts(lines(charge, "200.0001")) == [D("15.00")]
    assert amounts(lines(charge, "1")) == [D("5.00")]


def test_package_fractional_size():
    # 1 GB in packages of 0.25 GB = 4 packages; 1.01 GB -> 4.04 packages -> 5; * 0.30 = 1.50
    charge = package("0.30", "0.25")
    assert usage_amount(charge, D("1")) == D("1.20")
    assert usage_amount(charge, D("1.01")) == D("1.50")


# --------------------------------------------------------------------- graduated


@pytest.mark.parametrize(
    "q, exact, expected_lines",
    [
        # 0: no tier reached, no flat fee; one zero line for tier 1 so the charge shows
        ("0", D("0"), [(1, D("0"), D("0.00"))]),
        # 10: all in tier 1 (up_to inclusive): 10 * 0 = 0; tier 2 not reached, no flat fee
        ("10", D("0"), [(1, D("10"), D("0.00"))]),
        # 11: 10 * 0 + (1 * 0.10 + 1.50) = 1.60
        ("11", D("1.60"), [(1, D("10"), D("0.00")), (2, D("1"), D("1.60"))]),
        # 100: 0 + (90 * 0.10 + 1.50) = 9 + 1.5 = 10.50; tier 3 not reached
        ("100", D("10.50"), [(1, D("10"), D("0.00")), (2, D("90"), D("10.50"))]),
        # 150: 0 + (90 * 0.10 + 1.50) + 50 * 0.05 = 9 + 1.5 + 2.5 = 13.00
        (
            "150",
            D("13.00"),
            [(1, D("10"), D("0.00")), (2, D("90"), D("10.50")), (3, D("50"), D("2.50"))],
        ),
        # 10.5: tiers are (0,10], (10,100], ...: 10 in tier 1, 0.5 in tier 2:
        # 0 + (0.5 * 0.10 + 1.50) = 0.05 + 1.50 = 1.55
        ("10.5", D("1.55"), [(1, D("10"), D("0.00")), (2, D("0.5"), D("1.55"))]),
    ],
)
def test_graduated_worked_examples(q, exact, expected_lines):
    assert usage_amount(GRADUATED, D(q)) == exact
    ls = lines(GRADUATED, q)
    assert [(ln.tier, ln.quantity, ln.amount) for ln in ls] == expected_lines
    assert total(ls) == exact
    for ln in ls:
        # the tier's own unit price, never an average
        assert ln.unit_price == GRADUATED.tiers[ln.tier - 1].unit_price
        assert ln.kind == "usage" and ln.metric_code == "seats"


def test_graduated_line_descriptions():
    ls = lines(GRADUATED, "150")
    assert [ln.description for ln in ls] == [
        "seats tier 1 (0, 10]: 10 at 0",
        "seats tier 2 (10, 100]: 90 at 0.10 + flat fee 1.50",
        "seats tier 3 (100, inf): 50 at 0.05",
    ]


def test_graduated_rounds_each_line_once():
    # tiers (up to 1 at 0.005), (unbounded at 0.005); q = 2:
    # each line 1 * 0.005 = 0.005 -> half-even 0.00|5 -> 0.00, so the invoice total is
    # 0.00 + 0.00 = 0.00 although the exact amount is 0.010 (rounding is per LINE).
    charge = tiered(PricingModel.GRADUATED, tier("1", "0.005"), tier(None, "0.005"))
    assert usage_amount(charge, D(2)) == D("0.010")
    assert amounts(lines(charge, "2")) == [D("0.00"), D("0.00")]


def test_graduated_flat_fee_on_first_tier_needs_usage():
    # flat fee 2.00 on tier 1: charged for any positive quantity, not for 0
    charge = tiered(PricingModel.GRADUATED, tier("10", "1", "2.00"), tier(None, "0.5"))
    assert usage_amount(charge, D(0)) == 0
    assert usage_amount(charge, D("0.001")) == D("2.001")  # 0.001 * 1 + 2.00
    assert amounts(lines(charge, "0.001")) == [D("2.00")]


# --------------------------------------------------------------------- volume


def test_volume_worked_examples():
    # 5 lies in tier 1 (up to 5, inclusive): 5 * 10 = 50.00
    assert usage_amount(VOLUME, D(5)) == D(50)
    (ln,) = lines(VOLUME, "5")
    assert (ln.tier, ln.quantity, ln.unit_price, ln.amount) == (1, D(5), D(10), D("50.00"))
    # 6 lies in tier 2: ALL 6 units at 8 = 48.00 (cheaper than 5 units: volume semantics)
    assert usage_amount(VOLUME, D(6)) == D(48)
    (ln,) = lines(VOLUME, "6")
    assert (ln.tier, ln.quantity, ln.unit_price, ln.amount) == (2, D(6), D(8), D("48.00"))
    assert ln.description == "seats volume tier 2 (5, inf): 6 at 8"
    # 5.5 is past 5, so tier 2: 5.5 * 8 = 44.00
    assert amounts(lines(VOLUME, "5.5")) == [D("44.00")]


def test_volume_flat_fee_and_zero():
    charge = tiered(PricingModel.VOLUME, tier("5", "10", "2.00"), tier(None, "8", "3.00"))
    # 6 * 8 + 3.00 = 51.00; 1 * 10 + 2.00 = 12.00
    assert usage_amount(charge, D(6)) == D("51.00")
    assert usage_amount(charge, D(1)) == D("12.00")
    # 0 -> 0, no flat fee; shown as a zero line of tier 1
    assert usage_amount(charge, D(0)) == 0
    (ln,) = lines(charge, "0")
    assert (ln.tier, ln.quantity, ln.amount) == (1, D(0), D("0.00"))


# --------------------------------------------------------------------- currencies


def test_jpy_zero_decimals_half_even():
    # 0.5 JPY per call: 5 calls = 2.5 -> 2 (even); 7 calls = 3.5 -> 4 (even)
    assert amounts(lines(per_unit("0.5"), "5", "JPY")) == [D("2")]
    assert amounts(lines(per_unit("0.5"), "7", "JPY")) == [D("4")]
    # graduated in JPY: 150 -> 13 exactly (prices as above) -> lines 0, 10 (10.5 -> 10), 2 (2.5 -> 2)
    ls = lines(GRADUATED, "150", "JPY")
    assert amounts(ls) == [D("0"), D("10"), D("2")]
    assert all(ln.amount.as_tuple().exponent == 0 for ln in ls)
    assert total(ls) == D("12")


def test_bhd_three_decimals_half_even():
    # 0.0005 BHD per call: 1001 calls = 0.5005 -> 0.500|5, 0 even -> 0.500
    (ln,) = lines(per_unit("0.0005"), "1001", "BHD")
    assert same(ln.amount, D("0.500"))
    # 1003 calls = 0.5015 -> 0.501|5, 1 odd -> 0.502
    assert amounts(lines(per_unit("0.0005"), "1003", "BHD")) == [D("0.502")]
    # package in BHD: 3 packages * 1.250 = 3.750
    assert same(lines(package("1.250", "10"), "21", "BHD")[0].amount, D("3.750"))


# --------------------------------------------------------------------- base fee


def spec(base_fee: str, currency: str = "USD") -> PlanSpec:
    return PlanSpec(
        code="pro",
        name="Pro",
        description="",
        currency=currency,
        interval=IntervalUnit.MONTH,
        interval_count=1,
        base_fee=D(base_fee),
        billing_timing=BillingTiming.IN_ADVANCE,
        trial_days=0,
        usage_charges=(per_unit("0.0025"),),
    )


def test_base_fee_line():
    ln = base_fee_line(spec("9.99"), START, END)
    assert ln == Line(
        kind="base_fee",
        description="Pro (pro) base fee",
        metric_code=None,
        quantity=D(1),
        unit_price=D("9.99"),
        amount=D("9.99"),
        period_start=START,
        period_end=END,
        fraction=None,
        tier=None,
    )
    assert same(base_fee_line(spec("10"), START, END).amount, D("10.00"))
    assert same(base_fee_line(spec("500", "JPY"), START, END).amount, D("500"))
    assert same(base_fee_line(spec("0"), START, END).amount, D("0.00"))


def test_invoice_total_is_sum_of_rounded_lines():
    # base 9.99 + per_unit 3.08 (from 3.085) + graduated 150 -> 0.00 + 10.50 + 2.50
    ls = [base_fee_line(spec("9.99"), START, END)]
    ls += lines(per_unit("0.0025"), "1234")
    ls += lines(GRADUATED, "150")
    assert total(ls) == D("26.07")  # 9.99 + 3.08 + 0 + 10.50 + 2.50
    assert total([]) == 0


def test_line_is_frozen():
    ln = base_fee_line(spec("9.99"), START, END)
    with pytest.raises(AttributeError):
        ln.amount = D(0)  # type: ignore[misc]


# --------------------------------------------------------------------- aggregate


def test_aggregate_picks_the_number_the_charge_is_priced_on():
    data = dict(
        quantity_sum=D("12.5"),
        event_count=7,
        quantity_max=D("4"),
        latest_quantity=D("2"),
        unique_count=3,
    )
    assert aggregate(Aggregation.SUM, **data) == D("12.5")
    assert aggregate(Aggregation.COUNT, **data) == D(7)
    assert aggregate(Aggregation.MAX, **data) == D(4)
    assert aggregate(Aggregation.LATEST, **data) == D(2)
    assert aggregate(Aggregation.UNIQUE_COUNT, **data) == D(3)
    assert aggregate("sum", **data) == D("12.5")
    assert all(isinstance(aggregate(a, **data), D) for a in Aggregation)


@pytest.mark.parametrize("agg", list(Aggregation))
def test_aggregate_without_events_is_zero(agg):
    assert aggregate(agg) == 0
    assert aggregate(
        agg,
        quantity_sum=None,
        event_count=0,
        quantity_max=None,
        latest_quantity=None,
        unique_count=0,
    ) == 0


def test_aggregate_refuses_float_and_unknown():
    with pytest.raises(TypeError):
        aggregate(Aggregation.SUM, quantity_sum=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        aggregate("median", quantity_sum=D(1))


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [D("-1"), D("NaN"), D("Infinity")])
def test_bad_quantities_are_refused(bad):
    with pytest.raises(ValueError):
        usage_amount(per_unit("1"), bad)


def test_float_quantity_is_refused():
    with pytest.raises(TypeError):
        usage_amount(per_unit("1"), 1.5)  # type: ignore[arg-type]


def test_period_must_be_ordered():
    with pytest.raises(ValueError):
        usage_lines(per_unit("1"), D(1), "USD", END, START)
    with pytest.raises(ValueError):
        base_fee_line(spec("1"), START, START)


def test_module_is_pure():
    # no float, no I/O, imports only the standard library and billing.domain
    source = pathlib.Path(pricing.__file__).read_text()
    tree = ast.parse(source)
    allowed = {"__future__", "dataclasses", "datetime", "decimal", "fractions", "functools", "typing"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module in allowed or node.module.startswith("billing.domain.")
        elif isinstance(node, ast.Import):
            assert all(a.name in allowed for a in node.names)
        elif isinstance(node, ast.Name):
            assert node.id not in {"float", "open", "print"}
        elif isinstance(node, ast.Constant):
            assert not isinstance(node.value, float)


# --------------------------------------------------------------------- properties

CURRENCIES = st.sampled_from(["USD", "JPY", "BHD", "CLF"])
quantities = st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False, allow_infinity=False)
prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
fees = st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw):
    bounds = draw(
        st.lists(
            st.decimals(min_value="0.001", max_value=10**5, places=3, allow_nan=False, allow_infinity=False),
            max_size=5,
            unique=True,
        )
    )
    ups: list[D | None] = sorted(bounds)
    ups.append(None)
    return tuple(Tier(u, draw(prices), draw(fees)) for u in ups)


@st.composite
def charges(draw):
    model = draw(st.sampled_from([PricingModel.PER_UNIT, PricingModel.PACKAGE, PricingModel.GRADUATED, PricingModel.VOLUME]))
    if model is PricingModel.PER_UNIT:
        return UsageCharge("m", Aggregation.SUM, model, draw(prices), None, ())
    if model is PricingModel.PACKAGE:
        size = draw(st.decimals(min_value="0.01", max_value=1000, places=2, allow_nan=False, allow_infinity=False))
        return UsageCharge("m", Aggregation.SUM, model, draw(prices), size, ())
    return UsageCharge("m", Aggregation.SUM, model, None, None, draw(tier_lists()))


@given(tier_lists(), quantities, quantities, CURRENCIES)
def test_graduated_is_monotone(tiers, a, b, currency):
    charge = UsageCharge("m", Aggregation.SUM, PricingModel.GRADUATED, None, None, tiers)
    lo, hi = sorted((a, b))
    assert usage_amount(charge, lo) <= usage_amount(charge, hi)
    # and so is the invoiced (per-line rounded) total
    assert total(usage_lines(charge, lo, currency, START, END)) <= total(
        usage_lines(charge, hi, currency, START, END)
    )


def _exact_line_value(charge: UsageCharge, ln: Line) -> D:
    with localcontext(Context(prec=200, traps=[Inexact])):
        value = ln.quantity * ln.unit_price
        if ln.tier is not None and ln.quantity > 0:
            value += charge.tiers[ln.tier - 1].flat_fee
    return value


@settings(max_examples=300)
@given(charges(), quantities, CURRENCIES)
def test_lines_are_whole_minor_units_within_half_a_unit(charge, q, currency):
    ls = usage_lines(charge, q, currency, START, END)
    assert ls
    half = Fraction(1, 2 * 10 ** minor_units(currency))
    exact_sum = Fraction(0)
    for ln in ls:
        to_minor_units(ln.amount, currency)  # raises unless whole minor units
        assert ln.amount.as_tuple().exponent == -minor_units(currency)
        exact = _exact_line_value(charge, ln)
        assert abs(Fraction(ln.amount) - Fraction(exact)) <= half
        assert ln.amount == round_money(exact, currency)  # rounded once, half-even
        exact = Fraction(exact)
        exact_sum += exact
    # the lines explain the exact amount completely
    assert exact_sum == Fraction(usage_amount(charge, q))
    assert total(ls) == sum((ln.amount for ln in ls), D(0))


@given(prices, quantities, CURRENCIES)
def test_volume_with_one_unbounded_tier_is_per_unit(price, q, currency):
    vol = UsageCharge("m", Aggregation.SUM, PricingModel.VOLUME, None, None, (Tier(None, price, D(0)),))
    pu = UsageCharge("m", Aggregation.SUM, PricingModel.PER_UNIT, price, None, ())
    assert usage_amount(vol, q) == usage_amount(pu, q)
    assert amounts(usage_lines(vol, q, currency, START, END)) == amounts(
        usage_lines(pu, q, currency, START, END)
    )


@given(prices, quantities)
def test_graduated_with_one_unbounded_tier_is_per_unit(price, q):
    grad = UsageCharge("m", Aggregation.SUM, PricingModel.GRADUATED, None, None, (Tier(None, price, D(0)),))
    assert usage_amount(grad, q) == usage_amount(per_unit(str(price)), q)


@given(charges(), quantities)
def test_usage_amount_is_exact(charge, q):
    # recompute with Fractions, independently of the implementation
    q_f = Fraction(q)
    model = charge.pricing_model
    if model is PricingModel.PER_UNIT:
        expected = q_f * Fraction(charge.unit_price)
    elif model is PricingModel.PACKAGE:
        n = -(-q_f // Fraction(charge.package_size))
        expected = n * Fraction(charge.unit_price)
    elif model is PricingModel.GRADUATED:
        expected, lower = Fraction(0), Fraction(0)
        for t in charge.tiers:
            upper = q_f if t.up_to is None else min(q_f, Fraction(t.up_to))
            if upper > lower:
                expected += (upper - lower) * Fraction(t.unit_price) + Fraction(t.flat_fee)
            if t.up_to is None:
                break
            lower = Fraction(t.up_to)
    else:
        t = next(t for t in charge.tiers if t.up_to is None or q_f <= Fraction(t.up_to))
        expected = q_f * Fraction(t.unit_price) + Fraction(t.flat_fee) if q_f > 0 else Fraction(0)
    assert Fraction(usage_amount(charge, q)) == expected


def test_fast_line_is_the_dataclass_line():
    # base_fee_line and usage_lines build their lines with pricing._line (no frozen
    # __init__): the very same object as Line(...), with every field of Line set, still frozen.
    from dataclasses import fields

    start, end = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)
    kw = dict(kind="usage", description="calls", metric_code="calls", quantity=D("3"), unit_price=D("0.5"),
              amount=D("1.50"), period_start=start, period_end=end, fraction=None, tier=2)
    fast = pricing._line(**kw)
    assert fast == Line(**kw) and hash(fast) == hash(Line(**kw))
    assert set(fast.__dict__) == {f.name for f in fields(Line)}
    with pytest.raises(AttributeError):
        fast.amount = D("2")  # type: ignore[misc]

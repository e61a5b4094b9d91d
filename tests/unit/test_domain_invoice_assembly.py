"""billing.domain.invoice_assembly: charges -> discounts -> commitment true-up -> credits.

Every amount below was worked out by hand; the arithmetic is in the comments.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal as D
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from billing.domain.invoice_assembly import (
    COMMITMENT_TRUE_UP, DISCOUNT, USAGE_CAP, Discount, DiscountKind, assemble, discount_lines,
    usage_charge_lines,
)
from billing.domain.invoicing import PeriodUsage, close_period
from billing.domain.lifecycle import SubscriptionStatus as S
from billing.domain.plans import Aggregation, BillingTiming, IntervalUnit, PlanSpec, PricingModel, Tier, UsageCharge
from billing.domain.pricing import Line, price_usage, total
from billing.domain.subscriptions import Subscription

T = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
JAN, FEB, MAR = (datetime(2026, m, 1, tzinfo=timezone.utc) for m in (1, 2, 3))
PCT, FIXED = DiscountKind.PERCENTAGE, DiscountKind.FIXED_AMOUNT
CALLS = UsageCharge("calls", Aggregation.SUM, PricingModel.PER_UNIT, D("0.01"), None, ())


def plan(fee="50.00", commitment="0", charges=(CALLS,), timing=BillingTiming.IN_ARREARS) -> PlanSpec:
    return PlanSpec("pro", "Pro", "", "EUR", IntervalUnit.MONTH, 1, D(fee), timing, 0, tuple(charges),
                    minimum_commitment=D(commitment))


def line(kind: str, amount: str, metric: str | None = None) -> Line:
    return Line(kind, kind, metric, D(1), D(amount), D(amount), JAN, FEB)


def kinds_amounts(lines):
    return [(ln.kind, ln.amount) for ln in lines]


def sub(**kw) -> Subscription:
    base = dict(id=uuid.UUID(int=7), customer_id="c", plan_id=uuid.UUID(int=1), status=S.ACTIVE, created_at=JAN,
                start_at=JAN, billing_anchor=JAN, trial_days=0, current_period_start=JAN, current_period_end=FEB)
    base.update(kw)
    return Subscription(**base)


def test_twenty_percent_off_the_invoice_then_the_commitment_tops_it_up():
    charges = [line("base_fee", "50.00"), line("usage", "12.34", "calls")]
    out = assemble(plan(commitment="100"), charges, [Discount("d1", PCT, D(20))], commitment_share=Fraction(1),
                   period_start=JAN, period_end=FEB)
    # 20% of 62.34 = 12.468 -> 12.47; 62.34 - 12.47 = 49.87; the commitment 100 - 49.87 = 50.13
    assert kinds_amounts(out[2:]) == [(DISCOUNT, D("-12.47")), (COMMITMENT_TRUE_UP, D("50.13"))]
    assert total(out) == D("100.00")


def test_the_order_discount_before_commitment_is_what_makes_the_total():
    # base 80, 50% off -> 40, then the commitment 100 tops up 60: total 100. (The other
    # order would give 80 + 20 true-up = 100, then half off: 50.) Where this differs from a
    # peer: in getlago/lago-api the true-up is a fee of the invoice
    # (app/services/commitments/minimum/calculate_true_up_fee_service.rb) and coupons
    # (app/services/credits/applied_coupons_service.rb) are applied to the invoice's fees,
    # so the other order; here the order (docs/billing.md, The order of an invoice).
    out = assemble(plan(commitment="100"), [line("base_fee", "80.00")], [Discount("d", PCT, D(50))],
                   commitment_share=Fraction(1), period_start=JAN, period_end=FEB)
    assert kinds_amounts(out) == [("base_fee", D("80.00")), (DISCOUNT, D("-40.00")), (COMMITMENT_TRUE_UP, D("60.00"))]


def test_a_named_fixed_discount_takes_at_most_its_target():
    charges = [line("base_fee", "50.00"), line("usage", "12.34", "calls")]
    out = discount_lines(charges, [Discount("d", FIXED, D(100), ("base_fee",))], "EUR", JAN, FEB)
    assert kinds_amounts(out) == [(DISCOUNT, D("-50.00"))]  # the usage stays charged
    out = discount_lines(charges, [Discount("d", PCT, D("12.5"), ("calls",))], "EUR", JAN, FEB)
    assert kinds_amounts(out) == [(DISCOUNT, D("-1.54"))]  # 12.34 * 0.125 = 1.5425 -> 1.54
    assert out[0].metric_code == "calls"


def test_discounts_apply_in_order_each_on_what_is_left():
    charges = [line("base_fee", "50.00"), line("usage", "10.00", "calls")]
    out = discount_lines(charges, [Discount("a", FIXED, D(55)), Discount("b", PCT, D(50))], "EUR", JAN, FEB)
    # a: 55 of 60; b: 50% of the 5 left = 2.50
    assert kinds_amounts(out) == [(DISCOUNT, D("-55.00")), (DISCOUNT, D("-2.50"))]


def test_a_discount_never_takes_the_invoice_below_zero_even_with_a_credit_line():
    # base 10 and a proration credit -8: a 100% base fee discount takes 2, not 10
    charges = [line("base_fee", "10.00"), line("proration_credit", "-8.00")]
    out = discount_lines(charges, [Discount("d", PCT, D(100), ("base_fee",))], "EUR", JAN, FEB)
    assert kinds_amounts(out) == [(DISCOUNT, D("-2.00"))]
    # nothing left: no line at all
    assert discount_lines([line("proration_credit", "-8.00")], [Discount("d", FIXED, D(5))], "EUR", JAN, FEB) == []


def test_a_used_up_discount_makes_no_line():
    assert discount_lines([line("base_fee", "10.00")], [Discount("d", PCT, D(10), (), 2, 2)], "EUR", JAN, FEB) == []


def test_lago_true_up_cases_no_charges_and_charges_above_the_commitment():
    # getlago/lago-api spec/services/commitments/minimum/calculate_true_up_fee_service_spec.rb:
    # "when there are no fees" the true-up is the commitment; "when fees total amount is
    # greater or equal than the commitment amount" it is zero (commitment 200 cents, fees 300).
    p = plan(commitment="2.00")
    none = assemble(p, [], [], commitment_share=Fraction(1), period_start=JAN, period_end=FEB)
    assert kinds_amounts(none) == [(COMMITMENT_TRUE_UP, D("2.00"))]
    above = assemble(p, [line("usage", "3.00", "calls")], [], commitment_share=Fraction(1), period_start=JAN,
                     period_end=FEB)
    assert kinds_amounts(above) == [("usage", D("3.00"))]


def test_the_commitment_is_prorated_by_seconds_for_a_partial_period():
    # a third of the period: 100 * 1/3 = 33.333.. -> 33.33; charges 20 -> true-up 13.33
    out = assemble(plan(commitment="100"), [line("usage", "20.00", "calls")], [], commitment_share=Fraction(1, 3),
                   period_start=JAN, period_end=FEB)
    assert kinds_amounts(out)[-1] == (COMMITMENT_TRUE_UP, D("13.33"))
    assert out[-1].fraction == Fraction(1, 3)


def test_a_cap_is_its_own_line_after_the_charge():
    graduated = UsageCharge("calls", Aggregation.SUM, PricingModel.GRADUATED, None, None,
                            (Tier(D(100), D("0.10"), D(0)), Tier(None, D("0.05"), D(0))), max_amount=D("20"))
    lines = usage_charge_lines(price_usage(plan(charges=(graduated,)), {"calls": PeriodUsage(D(500))}, JAN, FEB),
                               "EUR", JAN, FEB)
    # 100 * 0.10 = 10.00, 400 * 0.05 = 20.00: 30.00, capped at 20: -10.00
    assert kinds_amounts(lines) == [("usage", D("10.00")), ("usage", D("20.00")), (USAGE_CAP, D("-10.00"))]


def test_close_period_counts_a_discount_for_two_periods_and_tops_up_the_commitment():
    p = plan(commitment="100")
    d = Discount("d", PCT, D(20), (), 2, 0)
    closed = close_period(T, sub(), p, {"calls": PeriodUsage(D(1234))}, discounts=[d])
    # 50 + 12.34 = 62.34; -12.47; 49.87 < 100: +50.13
    assert kinds_amounts(closed.lines) == [("base_fee", D("50.00")), ("usage", D("12.34")),
                                           (DISCOUNT, D("-12.47")), (COMMITMENT_TRUE_UP, D("50.13"))]
    assert closed.total == D("100.00") and closed.discounts[0].used == 1
    second = close_period(T, closed.subscription, p, {}, discounts=closed.discounts)
    third = close_period(T, second.subscription, p, {}, discounts=second.discounts)
    # 50 -> -10 -> 40, true-up 60; the third close has no discount left: 50 + 50
    assert kinds_amounts(second.lines)[1:] == [("usage", D("0.00")), (DISCOUNT, D("-10.00")),
                                               (COMMITMENT_TRUE_UP, D("60.00"))]
    assert kinds_amounts(third.lines)[1:] == [("usage", D("0.00")), (COMMITMENT_TRUE_UP, D("50.00"))]


def test_close_period_prorates_the_commitment_from_a_mid_period_start():
    # period_fee_from Jan 11 of [Jan 1, Feb 1): 21 of 31 days; 31 * 21/31 = 21.00; no charges
    s = sub(period_fee_from=datetime(2026, 1, 11, tzinfo=timezone.utc))
    closed = close_period(T, s, plan(fee="0", commitment="31"), {})
    assert kinds_amounts(closed.lines)[-1] == (COMMITMENT_TRUE_UP, D("21.00"))


def test_a_trial_close_has_no_commitment_and_does_not_use_a_discount():
    d = Discount("d", PCT, D(20), (), 1, 0)
    closed = close_period(T, sub(status=S.TRIALING, trial_end=FEB), plan(commitment="100"), {}, discounts=[d])
    assert closed.lines == () and closed.discounts[0].used == 0


_KINDS = ["base_fee", "usage", "late_usage", "proration_credit", "proration_charge"]
_charge = st.builds(lambda k, cents, m: line(k, str(D(cents).scaleb(-2)), m), st.sampled_from(_KINDS),
                    st.integers(-5_000, 50_000), st.sampled_from([None, "calls", "seats"]))
_discount = st.builds(lambda i, kind, v, to, periods, used: Discount(
    f"d{i}", kind, D(v).scaleb(-2) if kind is FIXED else D(min(v, 10_000)).scaleb(-2), to, periods, used),
    st.integers(0, 99), st.sampled_from([PCT, FIXED]), st.integers(1, 20_000),
    st.sampled_from([(), ("base_fee",), ("calls",), ("seats", "base_fee")]), st.none() | st.integers(1, 3),
    st.integers(0, 3))


@settings(max_examples=400, deadline=None)
@given(charges=st.lists(_charge, max_size=8), discounts=st.lists(_discount, max_size=4),
       commitment=st.integers(0, 100_000), share=st.fractions(0, 1))
def test_order_holds_and_no_discount_drives_a_total_below_zero(charges, discounts, commitment, share):
    p = plan(commitment=str(D(commitment).scaleb(-2)))
    out = assemble(p, charges, discounts, commitment_share=share, period_start=JAN, period_end=FEB)
    rank = {DISCOUNT: 1, COMMITMENT_TRUE_UP: 2}
    ranks = [rank.get(ln.kind, 0) for ln in out]
    assert ranks == sorted(ranks)  # charges, then discounts, then the true-up
    assert list(out[:len(charges)]) == charges
    discounted = [ln for ln in out if ln.kind == DISCOUNT]
    assert all(ln.amount < 0 for ln in discounted)
    assert len(discounted) <= sum(d.applies() for d in discounts)
    charged = total(charges)
    after = charged + total(discounted)
    assert after >= min(charged, 0)  # discounts never take the invoice below zero (or lower a negative one)
    for ln in out:
        assert ln.amount == ln.amount.quantize(D("0.01"))  # every line rounded to the minor unit
    true_ups = [ln for ln in out if ln.kind == COMMITMENT_TRUE_UP]
    assert len(true_ups) <= 1
    if true_ups:
        assert true_ups[0].amount > 0 and total(out) >= after


_plans = st.builds(
    lambda fee, commitment, cap, timing: plan(
        fee=str(D(fee).scaleb(-2)), commitment=str(D(commitment).scaleb(-2)), timing=timing,
        charges=(UsageCharge("calls", Aggregation.SUM, PricingModel.GRADUATED, None, None,
                             (Tier(D(100), D("0.013"), D(0)), Tier(None, D("0.007"), D("0.50"))),
                             max_amount=None if cap is None else D(cap)),)),
    st.integers(0, 10_000), st.integers(0, 20_000), st.none() | st.integers(1, 50),
    st.sampled_from(list(BillingTiming)))


@settings(max_examples=300, deadline=None)
@given(p=_plans, calls=st.integers(0, 5_000), discounts=st.lists(_discount, max_size=3),
       paused_from_day=st.none() | st.integers(1, 30))
def test_a_close_of_a_random_plan_keeps_the_order(p, calls, discounts, paused_from_day):
    s = sub() if paused_from_day is None else sub(period_fee_from=datetime(2026, 1, 1 + paused_from_day,
                                                                         tzinfo=timezone.utc))
    closed = close_period(T, s, p, {"calls": PeriodUsage(D(calls))}, discounts=discounts)
    kinds = [ln.kind for ln in closed.lines]
    rank = {"base_fee": 0, "usage": 0, USAGE_CAP: 0, DISCOUNT: 1, COMMITMENT_TRUE_UP: 2}
    assert [rank[k] for k in kinds] == sorted(rank[k] for k in kinds)
    charges = total(ln for ln in closed.lines if rank[ln.kind] == 0)
    after = total(ln for ln in closed.lines if rank[ln.kind] <= 1)
    assert 0 <= after <= charges
    if p.minimum_commitment and COMMITMENT_TRUE_UP in kinds:
        assert closed.total <= p.minimum_commitment  # topped up to at most the (prorated) commitment
    assert closed.total >= after and closed.total == total(closed.lines)
    assert [d.used for d in closed.discounts] == [d.used + 1 if d.applies() else d.used for d in discounts]

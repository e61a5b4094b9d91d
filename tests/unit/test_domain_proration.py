"""billing.domain.proration (and the proration part of invoicing.close_period).

Worked examples first (every amount by hand, the arithmetic in the comments), then the
properties the issue asks for, with hypothesis.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings, strategies as st

from billing.domain import proration as P
from billing.domain import subscriptions as rules
from billing.domain.invoicing import close_period
from billing.domain.lifecycle import SubscriptionStatus as S
from billing.domain.money import minor_units, to_minor_units
from billing.domain.periods import add_interval
from billing.domain.plans import BillingTiming, IntervalUnit, PlanSpec
from billing.domain.pricing import Line
from billing.domain.subscriptions import CancelMode, ChangeTiming, Subscription

TENANT = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
SUB = uuid.UUID("00000000-0000-0000-0000-0000000000bb")
ADV, ARR = BillingTiming.IN_ADVANCE, BillingTiming.IN_ARREARS
NEXT, NOW, NONE = P.Behavior.NEXT_INVOICE, P.Behavior.INVOICE_NOW, P.Behavior.NONE


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


APR1, MAY1, JUN1 = utc(2026, 4, 1), utc(2026, 5, 1), utc(2026, 6, 1)  # April: 30 days, May: 31


def plan(fee="10.00", timing=ADV, interval=IntervalUnit.MONTH, count=1, code="p", currency="USD") -> PlanSpec:
    return PlanSpec(code, code.upper(), "", currency, interval, count, D(fee), timing, 0, ())


def pid(spec: PlanSpec) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{spec.code}/{spec.base_fee}/{spec.billing_timing}/{spec.interval}")


def sub(spec: PlanSpec, start=APR1, end=MAY1, anchor=None, **kw) -> Subscription:
    base = dict(id=SUB, customer_id="c", plan_id=pid(spec), status=S.ACTIVE, created_at=start, start_at=start,
                billing_anchor=anchor or start, trial_days=0, current_period_start=start, current_period_end=end)
    base.update(kw)
    return Subscription(**base)


def change(s: Subscription, old: PlanSpec, new: PlanSpec, at: datetime, behavior=NEXT, charged=True) -> P.Proration:
    after = rules.change_plan(s, old, pid(new), new, True, ChangeTiming.IMMEDIATELY, at).subscription
    return P.on_change(s, old, after, new, at, charged_in_advance=charged, behavior=behavior)


def kinds(lines) -> list[tuple[str, D]]:
    return [(ln.kind, ln.amount) for ln in lines]


def fee_lines(closed) -> list[tuple[str, D, datetime, datetime]]:
    return [(ln.kind, ln.amount, ln.period_start, ln.period_end) for ln in closed.lines if ln.kind == "base_fee"]


# ----------------------------------------------------------------------- the rule


def test_stripe_upgrade_example_halfway_from_10_to_20():
    # Stripe's documented example: halfway through a month, 10 -> 20. April has 30 days,
    # Apr 16 00:00 is 15 days in: unused 15/30 = 1/2. Credit -10 * 1/2 = -5.00, charge 20 * 1/2 = +10.00.
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    out = change(sub(basic), basic, pro, utc(2026, 4, 16))
    assert kinds(out.lines) == [("proration_credit", D("-5.00")), ("proration_charge", D("10.00"))]
    credit, charge = out.lines
    assert credit.fraction == charge.fraction == Fraction(1, 2)
    assert (credit.period_start, credit.period_end) == (utc(2026, 4, 16), MAY1)
    assert credit.unit_price == D("10.00") and charge.unit_price == D("20.00")
    assert sum(ln.amount for ln in out.lines) == D("5.00")
    assert "unused time" in credit.description and "1/2 of the period" in credit.description
    # The period is paid in advance at the new price; the close charges May at 20.00, nothing for April.
    assert out.subscription.plan_id == pid(pro) and out.subscription.period_fee_from == MAY1
    closed = close_period(TENANT, out.subscription, pro, {})
    assert fee_lines(closed) == [("base_fee", D("20.00"), MAY1, JUN1)]


def test_immediate_downgrade_credits_more_than_it_charges():
    # 20 -> 10 at Apr 8 12:00: 7.5 of 30 days used, unused 3/4. Credit -15.00, charge 7.50: net -7.50.
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    out = change(sub(pro), pro, basic, utc(2026, 4, 8, 12))
    assert kinds(out.lines) == [("proration_credit", D("-15.00")), ("proration_charge", D("7.50"))]
    assert out.lines[0].fraction == Fraction(3, 4)


def test_default_downgrade_waits_for_the_period_end_and_prorates_nothing():
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    s = sub(pro)
    after = rules.change_plan(s, pro, pid(basic), basic, True, ChangeTiming.DEFAULT, utc(2026, 4, 8)).subscription
    assert after.pending_plan_id == pid(basic) and after.plan_id == pid(pro)
    closed = close_period(TENANT, after, pro, {}, next_plan=basic)
    assert fee_lines(closed) == [("base_fee", D("10.00"), MAY1, JUN1)]  # May at the new price, April untouched


def test_change_in_arrears_charges_each_piece_at_its_own_price():
    # In arrears nothing was paid yet: the old plan's used part is charged now (10 * 1/2 = 5.00),
    # the new plan's part at the close (20 * 1/2 = 10.00). April costs 15.00 in all.
    basic, pro = plan("10.00", ARR, code="basic"), plan("20.00", ARR, code="pro")
    out = change(sub(basic), basic, pro, utc(2026, 4, 16))
    assert kinds(out.lines) == [("proration_charge", D("5.00"))]
    assert (out.lines[0].period_start, out.lines[0].period_end) == (APR1, utc(2026, 4, 16))
    assert "used time" in out.lines[0].description
    assert out.subscription.period_fee_from == utc(2026, 4, 16)
    closed = close_period(TENANT, out.subscription, pro, {})
    assert fee_lines(closed) == [("base_fee", D("10.00"), utc(2026, 4, 16), MAY1)]
    assert closed.lines[0].fraction == Fraction(1, 2)
    assert closed.subscription.period_fee_from is None  # the next period starts afresh


def test_two_changes_in_one_period_prorate_each_piece():
    # A 10 -> B 20 at 1/4 (Apr 8 12:00) -> C 40 at 3/4 (Apr 23 12:00). Exact: 10/4 + 20/2 + 40/4 = 22.50.
    a, b, c = plan("10.00", code="a"), plan("20.00", code="b"), plan("40.00", code="c")
    t1, t2 = utc(2026, 4, 8, 12), utc(2026, 4, 23, 12)
    # In advance: A was paid (10.00); credit A 3/4 -7.50, charge B 3/4 +15.00; credit B 1/4 -5.00, charge C 1/4 +10.00.
    first = change(sub(a), a, b, t1)
    second = change(first.subscription, b, c, t2)
    assert kinds(first.lines + second.lines) == [
        ("proration_credit", D("-7.50")), ("proration_charge", D("15.00")),
        ("proration_credit", D("-5.00")), ("proration_charge", D("10.00"))]
    assert D("10.00") + sum(ln.amount for ln in first.lines + second.lines) == D("22.50")
    assert fee_lines(close_period(TENANT, second.subscription, c, {})) == [("base_fee", D("40.00"), MAY1, JUN1)]
    # In arrears: A used 1/4 = 2.50 and B used 1/2 = 10.00 at the changes, C 1/4 = 10.00 at the close.
    a, b, c = (replace(p, billing_timing=ARR) for p in (a, b, c))
    first = change(sub(a), a, b, t1)
    second = change(first.subscription, b, c, t2)
    closed = close_period(TENANT, second.subscription, c, {})
    assert kinds(first.lines + second.lines) == [("proration_charge", D("2.50")), ("proration_charge", D("10.00"))]
    assert fee_lines(closed) == [("base_fee", D("10.00"), t2, MAY1)]


def test_change_from_in_arrears_to_in_advance_and_back():
    # arrears 10 -> advance 20 at Apr 16: used 5.00 charged, the new plan's half charged now 10.00, nothing at close.
    arr, adv = plan("10.00", ARR, code="arr"), plan("20.00", ADV, code="adv")
    up = change(sub(arr), arr, adv, utc(2026, 4, 16))
    assert kinds(up.lines) == [("proration_charge", D("5.00")), ("proration_charge", D("10.00"))]
    assert fee_lines(close_period(TENANT, up.subscription, adv, {})) == [("base_fee", D("20.00"), MAY1, JUN1)]
    # advance 20 (paid) -> arrears 10 at Apr 16: credit -10.00; the close charges the arrears half, 5.00.
    down = change(sub(adv), adv, arr, utc(2026, 4, 16))
    assert kinds(down.lines) == [("proration_credit", D("-10.00"))]
    assert fee_lines(close_period(TENANT, down.subscription, arr, {})) == [
        ("base_fee", D("5.00"), utc(2026, 4, 16), MAY1)]


def test_in_advance_period_no_run_charged_is_settled_like_arrears():
    # The first period after activation is charged at its close (charged_in_advance=False):
    # a change settles the old plan's used half now (5.00); the new plan's half is charged now too (10.00).
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    out = change(sub(basic), basic, pro, utc(2026, 4, 16), charged=False)
    assert kinds(out.lines) == [("proration_charge", D("5.00")), ("proration_charge", D("10.00"))]
    closed = close_period(TENANT, out.subscription, pro, {}, charged_in_advance=False)
    assert fee_lines(closed) == [("base_fee", D("20.00"), MAY1, JUN1)]  # April is not charged again


def test_proration_none_keeps_the_period_as_it_was_billed():
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    out = change(sub(basic), basic, pro, utc(2026, 4, 16), behavior=NONE)
    assert out.lines == () and out.subscription.period_fee_from == MAY1
    assert fee_lines(close_period(TENANT, out.subscription, pro, {})) == [("base_fee", D("20.00"), MAY1, JUN1)]
    # In arrears the close bills the whole period at the plan in effect then.
    a, b = replace(basic, billing_timing=ARR), replace(pro, billing_timing=ARR)
    out = change(sub(a), a, b, utc(2026, 4, 16), behavior=NONE)
    assert out.lines == ()
    assert fee_lines(close_period(TENANT, out.subscription, b, {})) == [("base_fee", D("20.00"), APR1, MAY1)]


def test_change_to_another_interval_credits_the_old_and_charges_the_new_period():
    # Monthly 30.00 paid for April; on Apr 11 to yearly 365.00: credit 20/30 -> -20.00; the new
    # period [Apr 11 2026, Apr 11 2027) is charged now, 365.00, and not again at its close.
    monthly, yearly = plan("30.00", code="m"), plan("365.00", interval=IntervalUnit.YEAR, code="y")
    t = utc(2026, 4, 11)
    out = change(sub(monthly), monthly, yearly, t)
    assert kinds(out.lines) == [("proration_credit", D("-20.00")), ("proration_charge", D("365.00"))]
    after = out.subscription
    assert (after.current_period_start, after.current_period_end) == (t, utc(2027, 4, 11))
    closed = close_period(TENANT, after, yearly, {}, charged_in_advance=False)
    assert fee_lines(closed) == [("base_fee", D("365.00"), utc(2027, 4, 11), utc(2028, 4, 11))]


# ----------------------------------------------------------------------- cancel


def test_immediate_cancel_in_advance_credits_the_unused_time():
    # 30.00 for April, canceled Apr 11: unused 20/30 -> -20.00.
    spec = plan("30.00")
    s = sub(spec)
    after = rules.cancel(s, utc(2026, 4, 11), CancelMode.IMMEDIATELY).subscription
    out = P.on_cancel(s, spec, after, utc(2026, 4, 11), charged_in_advance=True, behavior=NEXT)
    assert kinds(out.lines) == [("proration_credit", D("-20.00"))]
    assert out.subscription.status is S.CANCELED
    # The caller can turn the credit off.
    assert P.on_cancel(s, spec, after, utc(2026, 4, 11), charged_in_advance=True, behavior=NONE).lines == ()


def test_immediate_cancel_in_arrears_charges_only_the_used_time():
    spec = plan("30.00", ARR)
    s = sub(spec)
    after = rules.cancel(s, utc(2026, 4, 11), CancelMode.IMMEDIATELY).subscription
    out = P.on_cancel(s, spec, after, utc(2026, 4, 11), charged_in_advance=True, behavior=NEXT)
    assert kinds(out.lines) == [("proration_charge", D("10.00"))]  # 10/30 of 30.00
    # NONE: not prorated, the whole period's fee.
    assert kinds(P.on_cancel(s, spec, after, utc(2026, 4, 11), charged_in_advance=True, behavior=NONE).lines) == [
        ("base_fee", D("30.00"))]


def test_cancel_at_period_end_prorates_nothing():
    spec = plan("30.00")
    s = sub(spec)
    after = rules.cancel(s, utc(2026, 4, 11), CancelMode.AT_PERIOD_END).subscription
    closed = close_period(TENANT, after, spec, {})
    assert closed.lines == () and closed.subscription.status is S.CANCELED


def test_cancel_of_a_trial_or_a_paused_subscription_has_no_lines():
    spec = plan("30.00")
    trial = sub(spec, status=S.TRIALING, trial_end=MAY1)
    assert P.on_cancel(trial, spec, trial, utc(2026, 4, 11), charged_in_advance=False, behavior=NEXT).lines == ()
    paused = sub(spec, status=S.PAUSED, paused_at=utc(2026, 4, 5), period_fee_from=MAY1)
    assert P.on_cancel(paused, spec, paused, utc(2026, 4, 11), charged_in_advance=True, behavior=NEXT).lines == ()


# ----------------------------------------------------------------------- pause and resume


def _pause(s, spec, at, charged=True):
    after = rules.pause(s, at, None).subscription
    return P.on_pause(s, spec, after, at, charged_in_advance=charged)


def _resume(s, spec, at):
    after = rules.resume(s, at).subscription
    return P.on_resume(s, spec, after, at)


def test_pause_and_resume_in_one_period_in_advance():
    # 30.00 paid for April. Pause Apr 11: credit 20/30 = -20.00. Resume Apr 21: the close charges
    # [Apr 21, May 1) = 10/30 = 10.00 with May's 30.00. April: 30 - 20 + 10 = 20.00 for 20 active days.
    spec = plan("30.00")
    paused = _pause(sub(spec), spec, utc(2026, 4, 11))
    assert kinds(paused.lines) == [("proration_credit", D("-20.00"))]
    assert paused.subscription.status is S.PAUSED and paused.subscription.period_fee_from == MAY1
    resumed = _resume(paused.subscription, spec, utc(2026, 4, 21))
    assert resumed.lines == () and resumed.subscription.period_fee_from == utc(2026, 4, 21)
    closed = close_period(TENANT, resumed.subscription, spec, {})
    assert fee_lines(closed) == [("base_fee", D("10.00"), utc(2026, 4, 21), MAY1), ("base_fee", D("30.00"), MAY1, JUN1)]


def test_pause_and_resume_in_one_period_in_arrears():
    # Used Apr 1..11 charged at the pause (10.00); Apr 21..May 1 at the close (10.00): 20.00.
    spec = plan("30.00", ARR)
    paused = _pause(sub(spec), spec, utc(2026, 4, 11))
    assert kinds(paused.lines) == [("proration_charge", D("10.00"))]
    resumed = _resume(paused.subscription, spec, utc(2026, 4, 21))
    assert fee_lines(close_period(TENANT, resumed.subscription, spec, {})) == [
        ("base_fee", D("10.00"), utc(2026, 4, 21), MAY1)]


def test_pause_over_a_period_end_charges_nothing_for_the_paused_time():
    # 31.00 a month, in advance. Pause Apr 21: credit 10/30 of 31.00 = 10.333.. -> -10.33.
    # April closes paused: no April remainder, no May fee in advance. Resume May 11: the close on
    # Jun 1 charges [May 11, Jun 1) = 21/31 of 31.00 = 21.00.
    spec = plan("31.00")
    paused = _pause(sub(spec), spec, utc(2026, 4, 21))
    assert kinds(paused.lines) == [("proration_credit", D("-10.33"))]
    april = close_period(TENANT, paused.subscription, spec, {})
    assert april.lines == () and april.subscription.status is S.PAUSED
    assert april.subscription.period_fee_from == JUN1  # a period that starts paused has nothing to charge
    resumed = _resume(april.subscription, spec, utc(2026, 5, 11))
    may = close_period(TENANT, resumed.subscription, spec, {})
    assert fee_lines(may) == [("base_fee", D("21.00"), utc(2026, 5, 11), JUN1),
                              ("base_fee", D("31.00"), JUN1, utc(2026, 7, 1))]
    assert may.lines[0].fraction == Fraction(21, 31)
    # Paused all through May instead: nothing at all.
    assert close_period(TENANT, april.subscription, spec, {}).lines == ()


def test_scheduled_resume_inside_the_current_period_is_an_ordinary_resume():
    # 30.00 in advance, paused Apr 11 until Apr 21; carried out late (Apr 23), still in April:
    # the close charges [Apr 21, May 1) = 10.00, as if resumed on the dot.
    spec = plan("30.00")
    paused = _pause(sub(spec), spec, utc(2026, 4, 11)).subscription
    paused = replace(paused, pause_resumes_at=utc(2026, 4, 21))
    change = rules.resume_as_scheduled(paused, utc(2026, 4, 23))
    out = P.on_resume(paused, spec, change.subscription, paused.pause_resumes_at)
    assert out.lines == () and out.subscription.period_fee_from == utc(2026, 4, 21)
    assert fee_lines(close_period(TENANT, out.subscription, spec, {}))[0] == (
        "base_fee", D("10.00"), utc(2026, 4, 21), MAY1)


@pytest.mark.parametrize("timing", [ADV, ARR])
def test_resume_due_in_a_period_a_run_closed_as_paused_charges_that_time(timing):
    # 31.00 a month. Paused Apr 21 until Apr 26 12:00:00.5, but a run closed April (paused) before
    # the scheduler resumed it (May 3). April's [Apr 26 12:00, May 1) = 4.5/30 days was charged by
    # nobody: a used-time charge of 31 * 4.5/30 = 4.65 now; May is charged from its start.
    spec = plan("31.00", timing)
    paused = _pause(sub(spec), spec, utc(2026, 4, 21)).subscription
    paused = replace(paused, pause_resumes_at=utc(2026, 4, 26, 12) + timedelta(microseconds=500_000))
    april = close_period(TENANT, paused, spec, {})
    assert [ln for ln in april.lines if ln.kind == "base_fee"] == []
    may = april.subscription
    change = rules.resume_as_scheduled(may, utc(2026, 5, 3))
    out = P.on_resume(may, spec, change.subscription, may.pause_resumes_at)
    assert kinds(out.lines) == [("proration_charge", D("4.65"))]
    assert (out.lines[0].period_start, out.lines[0].period_end) == (utc(2026, 4, 26, 12), MAY1)
    assert out.lines[0].fraction == Fraction(9, 60)
    assert out.subscription.period_fee_from == MAY1  # all of May at its close
    assert fee_lines(close_period(TENANT, out.subscription, spec, {}))[0] == ("base_fee", D("31.00"), MAY1, JUN1)


def test_resume_due_several_closed_periods_ago_charges_each_piece():
    # 31.00 a month in arrears, resume due Apr 16; runs closed April and May paused; resumed Jun 5:
    # [Apr 16, May 1) = 15/30 -> 15.50, [May 1, Jun 1) whole -> 31.00.
    spec = plan("31.00", ARR)
    s = sub(spec, start=JUN1, end=utc(2026, 7, 1), anchor=APR1, status=S.PAUSED, paused_at=utc(2026, 4, 11),
            pause_resumes_at=utc(2026, 4, 16), period_fee_from=utc(2026, 7, 1))
    lines = P.resumed_late_lines(s, spec, utc(2026, 4, 16))
    assert kinds(lines) == [("proration_charge", D("15.50")), ("proration_charge", D("31.00"))]
    assert [(ln.period_start, ln.period_end) for ln in lines] == [(utc(2026, 4, 16), MAY1), (MAY1, JUN1)]
    assert P.resumed_late_lines(s, spec, JUN1) == () and P.resumed_late_lines(s, spec, utc(2026, 6, 2)) == ()


def test_a_plan_change_while_paused_has_no_lines():
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    paused = _pause(sub(basic), basic, utc(2026, 4, 11)).subscription
    out = change(paused, basic, pro, utc(2026, 4, 16))
    assert out.lines == () and out.subscription.period_fee_from == MAY1


# ----------------------------------------------------------------------- first period, anchors, calendars


def test_billing_anchor_other_than_the_start_prorates_the_first_period():
    # Start Jan 15 2026, anchor on the 1st: first period [Jan 15, Feb 1) = 17 of January's 31 days.
    # 31.00 * 17/31 = 17.00 (in arrears at its close; in advance at its close, with February's 31.00).
    for timing in (ARR, ADV):
        spec = plan("31.00", timing)
        created = rules.create(subscription_id=SUB, customer_id="c", plan_id=pid(spec), plan=spec,
                               now=utc(2026, 1, 15), start_at=None, billing_anchor=utc(2026, 2, 1), trial_days=0,
                               metadata={}).subscription
        s = rules.activate(created, spec, utc(2026, 1, 15)).subscription
        assert (s.current_period_start, s.current_period_end) == (utc(2026, 1, 15), utc(2026, 2, 1))
        closed = close_period(TENANT, s, spec, {}, charged_in_advance=False)
        expected = [("base_fee", D("17.00"), utc(2026, 1, 15), utc(2026, 2, 1))]
        if timing is ADV:
            expected.append(("base_fee", D("31.00"), utc(2026, 2, 1), utc(2026, 3, 1)))
        assert fee_lines(closed) == expected
        assert closed.lines[0].fraction == Fraction(17, 31)


def test_first_paid_period_after_a_trial_with_an_anchor_is_prorated():
    # Trial Jan 1..15 (14 days), anchor Feb 1: the trial's close charges [Jan 15, Feb 1) in advance, 17/31.
    spec = plan("31.00")
    created = rules.create(subscription_id=SUB, customer_id="c", plan_id=pid(spec), plan=spec, now=utc(2026, 1, 1),
                           start_at=None, billing_anchor=utc(2026, 2, 1), trial_days=14, metadata={}).subscription
    trial = rules.activate(created, spec, utc(2026, 1, 1)).subscription
    closed = close_period(TENANT, trial, spec, {})
    assert fee_lines(closed) == [("base_fee", D("17.00"), utc(2026, 1, 15), utc(2026, 2, 1))]


def test_month_end_anchor_31st_to_february():
    # Anchor Jan 31: [Jan 31, Feb 28) 2026 is 28 days; a change on Feb 14 is exactly halfway.
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    s = sub(basic, start=utc(2026, 1, 31), end=utc(2026, 2, 28))
    out = change(s, basic, pro, utc(2026, 2, 14))
    assert kinds(out.lines) == [("proration_credit", D("-5.00")), ("proration_charge", D("10.00"))]
    # In the leap year 2028 the same period runs to Feb 29: 29 days, Feb 14 leaves 15/29.
    # 10 * 15/29 = 5.1724.. -> -5.17; 20 * 15/29 = 10.3448.. -> 10.34.
    s = sub(basic, start=utc(2028, 1, 31), end=utc(2028, 2, 29))
    out = change(s, basic, pro, utc(2028, 2, 14))
    assert kinds(out.lines) == [("proration_credit", D("-5.17")), ("proration_charge", D("10.34"))]
    assert out.lines[0].fraction == Fraction(15, 29)
    # And the next period after [Feb 29, Mar 31) is [Mar 31, ...): the anchor's day comes back.
    assert add_interval(utc(2028, 1, 31), IntervalUnit.MONTH, 1, 2) == utc(2028, 3, 31)


def test_leap_years():
    # A yearly period [Mar 1 2027, Mar 1 2028) has 366 days (Feb 29 2028). 366.00 a year, canceled
    # Jan 1 2028: 60 days unused (31 + 29) -> credit -60.00. The same in a common year: 59/365 of 365.00.
    spec = plan("366.00", interval=IntervalUnit.YEAR)
    s = sub(spec, start=utc(2027, 3, 1), end=utc(2028, 3, 1))
    after = rules.cancel(s, utc(2028, 1, 1), CancelMode.IMMEDIATELY).subscription
    out = P.on_cancel(s, spec, after, utc(2028, 1, 1), charged_in_advance=True, behavior=NEXT)
    assert kinds(out.lines) == [("proration_credit", D("-60.00"))]
    assert out.lines[0].fraction == Fraction(60, 366)
    spec = plan("365.00", interval=IntervalUnit.YEAR)
    s = sub(spec, start=utc(2026, 3, 1), end=utc(2027, 3, 1))
    after = rules.cancel(s, utc(2027, 1, 1), CancelMode.IMMEDIATELY).subscription
    out = P.on_cancel(s, spec, after, utc(2027, 1, 1), charged_in_advance=True, behavior=NEXT)
    assert kinds(out.lines) == [("proration_credit", D("-59.00"))]


def test_sub_second_times_count_from_the_second_they_fall_in():
    basic, pro = plan("10.00", code="basic"), plan("20.00", code="pro")
    exact = change(sub(basic), basic, pro, utc(2026, 4, 16))
    later = change(sub(basic), basic, pro, utc(2026, 4, 16, 0, 0, 0, 999_999))
    assert later.lines == exact.lines
    assert later.subscription.period_fee_from == exact.subscription.period_fee_from
    # A period whose boundaries carry microseconds (anchor = activation time): seconds count from its start.
    start = utc(2026, 4, 1, 9, 30, 0, 123_456)
    s = sub(basic, start=start, end=add_interval(start, IntervalUnit.MONTH, 1))
    out = change(s, basic, pro, start + timedelta(days=15, microseconds=900_000))
    assert out.lines[0].fraction == Fraction(1, 2) and out.lines[0].period_start == start + timedelta(days=15)


def test_prorated_amount_rounds_half_even_once():
    assert P.prorated_amount(D("0.05"), Fraction(1, 2), "USD") == D("0.02")  # 0.025 -> 0.02
    assert P.prorated_amount(D("0.07"), Fraction(1, 2), "USD") == D("0.04")  # 0.035 -> 0.04
    assert P.prorated_amount(D("0.05000001"), Fraction(1, 2), "USD") == D("0.03")  # just above half
    assert P.prorated_amount(D("10"), Fraction(1, 3), "JPY") == D("3")
    assert P.prorated_amount(D("1"), Fraction(1, 3), "BHD") == D("0.333")
    with pytest.raises(TypeError):
        P.prorated_amount(0.5, Fraction(1, 2), "USD")  # type: ignore[arg-type]


# ----------------------------------------------------------------------- properties

CURRENCIES = st.sampled_from(["USD", "JPY", "BHD", "EUR"])
PRICES = st.decimals(min_value=D("0"), max_value=D("1000000"), places=4, allow_nan=False, allow_infinity=False)
UNITS = st.sampled_from([(IntervalUnit.DAY, 1), (IntervalUnit.WEEK, 2), (IntervalUnit.MONTH, 1),
                         (IntervalUnit.MONTH, 3), (IntervalUnit.YEAR, 1)])
STARTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)).map(
    lambda d: d.replace(tzinfo=timezone.utc))


def half_unit(currency: str) -> Fraction:
    return Fraction(1, 2 * 10 ** minor_units(currency))


def exact(line: Line, price: D, sign: int = 1) -> Fraction:
    return sign * Fraction(price) * line.fraction


def whole_minor_units(line: Line, currency: str) -> bool:
    to_minor_units(line.amount, currency)  # raises if not whole
    return True


def at_share(start: datetime, end: datetime, millionths: int) -> datetime:
    return start + timedelta(microseconds=((end - start) // timedelta(microseconds=1)) * millionths // 10**6)


@st.composite
def period_and_time(draw):
    unit, count = draw(UNITS)
    start = draw(STARTS)
    end = add_interval(start, unit, count)
    t = at_share(start, end, draw(st.integers(0, 10**6 - 1)))
    return unit, count, start, end, t


@settings(max_examples=300, deadline=None)
@given(period_and_time(), PRICES, PRICES, CURRENCIES)
def test_every_line_is_whole_minor_units_and_within_half_a_unit(pt, old_fee, new_fee, currency):
    unit, count, start, end, t = pt
    old = plan(str(old_fee), interval=unit, count=count, code="old", currency=currency)
    new = plan(str(new_fee), interval=unit, count=count, code="new", currency=currency)
    assume(pid(old) != pid(new))
    out = change(sub(old, start=start, end=end), old, new, t)
    elapsed = P.elapsed(start, t)
    total = P.elapsed(start, end)
    for ln in out.lines:
        assert whole_minor_units(ln, currency)
        price, sign = (old_fee, -1) if ln.kind == P.CREDIT else (new_fee, 1)
        assert ln.fraction == Fraction(total - elapsed, total)  # the rule, exactly
        assert abs(Fraction(ln.amount) - exact(ln, price, sign)) <= half_unit(currency)


@settings(max_examples=300, deadline=None)
@given(period_and_time(), PRICES, CURRENCIES)
def test_in_advance_canceled_at_any_time_kept_plus_credited_is_the_full_price(pt, fee, currency):
    unit, count, start, end, t = pt
    spec = plan(str(fee), interval=unit, count=count, currency=currency)
    s = sub(spec, start=start, end=end)
    charged = P.fee_piece(spec, start, end, (start, end))  # the full fee, as the run charged it
    after = rules.cancel(s, t, CancelMode.IMMEDIATELY).subscription
    out = P.on_cancel(s, spec, after, t, charged_in_advance=True, behavior=NEXT)
    credited = sum((-ln.amount for ln in out.lines), D(0))
    kept = charged.amount - credited
    assert kept + credited == charged.amount
    used = Fraction(P.elapsed(start, t), P.elapsed(start, end))
    assert abs(Fraction(kept) - Fraction(fee) * used) <= half_unit(currency) * 2  # the fee line and the credit
    assert abs(Fraction(credited) - Fraction(fee) * (1 - used)) <= half_unit(currency)
    assert 0 <= credited <= charged.amount


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([ADV, ARR]), min_size=6, max_size=6), UNITS, STARTS,
       st.lists(PRICES, min_size=2, max_size=6), st.lists(st.integers(1, 10**6 - 1), min_size=5, max_size=5),
       CURRENCIES, st.booleans())
def test_any_sequence_of_changes_bills_each_piece_at_its_price(timings, uc, start, fees, cuts, currency, charged):
    # Every plan of the sequence has its own timing: in advance and in arrears mixed.
    unit, count = uc
    end = add_interval(start, unit, count)
    times = sorted({at_share(start, end, c) for c in cuts[:len(fees) - 1]})
    fees = fees[:len(times) + 1]
    specs = [plan(str(f), timings[i], unit, count, code=f"p{i}", currency=currency) for i, f in enumerate(fees)]
    s = sub(specs[0], start=start, end=end)
    lines: list[Line] = []
    paid_in_advance = timings[0] is ADV and charged
    if paid_in_advance:  # what the run charged when it opened the period
        lines.append(P.fee_piece(specs[0], start, end, (start, end)))
    for i, t in enumerate(times):
        out = change(s, specs[i], specs[i + 1], t, charged=charged)
        lines += out.lines
        s = out.subscription
    closed = close_period(TENANT, s, specs[-1], {}, charged_in_advance=charged)
    lines += [ln for ln in closed.lines if ln.kind == "base_fee" and ln.period_start < end]
    # The exact sum over the pieces of price * the piece's share (in whole seconds).
    bounds = [start, *(P.floor_to_second((start, end), t) for t in times), end]
    length = P.elapsed(start, end)
    want = sum(Fraction(f) * Fraction(P.elapsed(a, b), length) for f, a, b in zip(fees, bounds, bounds[1:]))
    got = sum(Fraction(ln.amount) for ln in lines)
    assert all(whole_minor_units(ln, currency) for ln in lines)
    assert abs(got - want) <= half_unit(currency) * len(lines)


@settings(max_examples=200, deadline=None)
@given(period_and_time(), PRICES, CURRENCIES, st.sampled_from([ADV, ARR]))
def test_a_change_to_the_same_price_nets_zero(pt, fee, currency, timing):
    unit, count, start, end, t = pt
    old = plan(str(fee), timing, unit, count, code="old", currency=currency)
    new = plan(str(fee), timing, unit, count, code="new", currency=currency)
    s = sub(old, start=start, end=end)
    out = change(s, old, new, t)
    if timing is ADV:
        assert sum(ln.amount for ln in out.lines) == 0
    else:  # in arrears: the used part now plus the rest at the close = what no change would have cost
        closed = close_period(TENANT, out.subscription, new, {})
        unchanged = close_period(TENANT, s, old, {})
        got = sum(ln.amount for ln in out.lines) + sum(ln.amount for ln in closed.lines if ln.kind == "base_fee")
        want = sum(ln.amount for ln in unchanged.lines if ln.kind == "base_fee")
        assert abs(Fraction(got - want)) <= 2 * half_unit(currency)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([ADV, ARR]), UNITS, STARTS, PRICES, st.integers(0, 10**6 - 1), st.integers(0, 10**6 - 1),
       CURRENCIES, st.booleans())
def test_paused_time_is_never_charged(timing, uc, start, fee, c1, c2, currency, resume):
    unit, count = uc
    end = add_interval(start, unit, count)
    p, r = sorted((at_share(start, end, c1), at_share(start, end, c2)))
    spec = plan(str(fee), timing, unit, count, currency=currency)
    s = sub(spec, start=start, end=end)
    lines = [P.fee_piece(spec, start, end, (start, end))] if timing is ADV else []  # paid when opened
    paused = _pause(s, spec, p)
    lines += paused.lines
    s = paused.subscription
    if resume:
        s = _resume(s, spec, r).subscription
    closed = close_period(TENANT, s, spec, {})
    lines += [ln for ln in closed.lines if ln.kind == "base_fee" and ln.period_start < end]
    nominal = (start, end)
    active = P.share(nominal, start, P.floor_to_second(nominal, p))
    if resume:
        active += P.share(nominal, P.floor_to_second(nominal, r), end)
    got = sum(Fraction(ln.amount) for ln in lines)
    assert all(whole_minor_units(ln, currency) for ln in lines)
    assert abs(got - Fraction(fee) * active) <= half_unit(currency) * len(lines)
    # Paused at the close: the next period is not charged in advance either.
    if not resume:
        assert [ln for ln in closed.lines if ln.period_start >= end] == []


@settings(max_examples=200, deadline=None)
@given(UNITS, STARTS, st.integers(1, 10**6 - 1), PRICES, CURRENCIES, st.sampled_from([ADV, ARR]))
def test_a_first_period_cut_by_the_anchor_costs_its_share(uc, nominal_start, cut, fee, currency, timing):
    unit, count = uc
    nominal_end = add_interval(nominal_start, unit, count)
    start = at_share(nominal_start, nominal_end, cut)
    assume(P.elapsed(start, nominal_end) > 0 and fee > 0)  # a zero fee makes no base-fee line
    spec = plan(str(fee), timing, unit, count, currency=currency)
    s = sub(spec, start=start, end=nominal_end, anchor=nominal_start)
    closed = close_period(TENANT, s, spec, {}, charged_in_advance=False)
    first = closed.lines[0]
    want = Fraction(P.elapsed(nominal_start, nominal_end) - P.elapsed(nominal_start, start),
                    P.elapsed(nominal_start, nominal_end))
    assert (first.period_start, first.period_end) == (start, nominal_end)
    assert (first.fraction or Fraction(1)) == want
    assert whole_minor_units(first, currency)
    assert abs(Fraction(first.amount) - Fraction(fee) * want) <= half_unit(currency)


EVENTS = st.lists(st.tuples(st.sampled_from(["change", "pause", "resume"]), st.integers(0, 10**6 - 1), PRICES,
                            st.sampled_from([ADV, ARR])), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(EVENTS, UNITS, STARTS, PRICES, st.sampled_from([ADV, ARR]), CURRENCIES, st.booleans())
def test_any_mix_of_changes_pauses_and_resumes_bills_active_time_at_its_price(events, uc, start, fee0, timing0,
                                                                            currency, charged):
    """A model: the period costs, for every second the subscription was active, the price
    of the plan in effect then; paused seconds cost nothing. What the lines add up to is
    within half a minor unit per line of that."""
    unit, count = uc
    end = add_interval(start, unit, count)
    nominal = (start, end)
    spec = plan(str(fee0), timing0, unit, count, code="p0", currency=currency)
    s = sub(spec, start=start, end=end)
    lines: list[Line] = [P.fee_piece(spec, start, end, nominal)] if timing0 is ADV and charged else []
    want, since, paused = Fraction(0), start, False
    for n, (kind, cut, price, timing) in enumerate(sorted(events, key=lambda e: e[1])):
        t = at_share(start, end, cut)
        tf = P.floor_to_second(nominal, t)
        if kind == "change":
            new = plan(str(price), timing, unit, count, code=f"p{n + 1}", currency=currency)
            if not paused:
                want += Fraction(spec.base_fee) * P.share(nominal, since, tf)
                since = tf
            out = change(s, spec, new, t, charged=charged)
            spec = new
        elif kind == "pause" and not paused:
            want += Fraction(spec.base_fee) * P.share(nominal, since, tf)
            out, paused = _pause(s, spec, t, charged=charged), True
        elif kind == "resume" and paused:
            out, paused, since = _resume(s, spec, t), False, tf
        else:
            continue
        lines += out.lines
        s = out.subscription
    if not paused:
        want += Fraction(spec.base_fee) * P.share(nominal, since, end)
    closed = close_period(TENANT, s, spec, {}, charged_in_advance=charged)
    lines += [ln for ln in closed.lines if ln.kind == "base_fee" and ln.period_start < end]
    assert all(whole_minor_units(ln, currency) for ln in lines)
    got = sum(Fraction(ln.amount) for ln in lines)
    assert abs(got - want) <= half_unit(currency) * len(lines)

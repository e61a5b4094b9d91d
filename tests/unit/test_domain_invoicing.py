"""billing.domain.invoicing: what closing a period bills and how the subscription advances.

Every amount below was worked out by hand; the arithmetic is in the comments.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from billing.domain.invoicing import NAMESPACE, PeriodUsage, close_period, invoice_request_id, is_due, period_usage
from billing.domain.lifecycle import SubscriptionStatus as S
from billing.domain.plans import Aggregation, BillingTiming, IntervalUnit, PlanSpec, PricingModel, Tier, UsageCharge
from billing.domain.subscriptions import Subscription

TENANT = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
SUB = uuid.UUID("00000000-0000-0000-0000-0000000000bb")
PLAN = uuid.UUID("00000000-0000-0000-0000-000000000001")
PLAN2 = uuid.UUID("00000000-0000-0000-0000-000000000002")


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


JAN, FEB, MAR = utc(2026, 1, 15), utc(2026, 2, 15), utc(2026, 3, 15)

API = UsageCharge("api_calls", Aggregation.SUM, PricingModel.PER_UNIT, D("0.002"), None, ())
SEATS = UsageCharge("seats", Aggregation.MAX, PricingModel.GRADUATED, None, None,
                    (Tier(D("5"), D("0"), D("0")), Tier(None, D("4.00"), D("0"))))


def plan(timing=BillingTiming.IN_ADVANCE, fee="10.00", charges=(API,), interval=IntervalUnit.MONTH, count=1,
         code="pro") -> PlanSpec:
    return PlanSpec(code, "Pro", "", "EUR", interval, count, D(fee), timing, 0, tuple(charges))


def sub(**kw) -> Subscription:
    base = dict(id=SUB, customer_id="c-1", plan_id=PLAN, status=S.ACTIVE, created_at=JAN, start_at=JAN,
                billing_anchor=JAN, trial_days=0, current_period_start=JAN, current_period_end=FEB)
    base.update(kw)
    return Subscription(**base)


def amounts(closed):
    return [(ln.kind, ln.metric_code, ln.quantity, ln.unit_price, ln.amount, ln.period_start, ln.period_end)
            for ln in closed.lines]


def test_in_advance_bills_next_period_fee_and_the_closed_periods_usage():
    # 12,345 api calls at 0.002 = 24.69; base fee 10.00 for [Feb 15, Mar 15). Total 34.69.
    closed = close_period(TENANT, sub(), plan(), {"api_calls": PeriodUsage(quantity_sum=D(12345), event_count=3)})
    assert amounts(closed) == [
        ("base_fee", None, D(1), D("10.00"), D("10.00"), FEB, MAR),
        ("usage", "api_calls", D(12345), D("0.002"), D("24.69"), JAN, FEB),
    ]
    assert closed.total == D("34.69")
    assert (closed.period_start, closed.period_end, closed.currency) == (JAN, FEB, "EUR")
    after = closed.subscription
    assert (after.status, after.current_period_start, after.current_period_end) == (S.ACTIVE, FEB, MAR)
    assert closed.event == "subscription.period_advanced"


def test_in_advance_first_period_no_run_opened_is_charged_too():
    # Nobody charged [Jan 15, Feb 15) in advance: 10.00 for it + 10.00 for the next + usage 0.
    closed = close_period(TENANT, sub(), plan(), {}, charged_in_advance=False)
    assert [(ln.kind, ln.amount, ln.period_start) for ln in closed.lines] == [
        ("base_fee", D("10.00"), JAN), ("base_fee", D("10.00"), FEB), ("usage", D("0.00"), JAN)]
    assert closed.total == D("20.00")


def test_in_arrears_bills_the_closed_period_fee():
    # Seats max 8 in graduated tiers: 5 free, 3 at 4.00 = 12.00. Fee 10.00 for [Jan 15, Feb 15). Total 22.00.
    closed = close_period(TENANT, sub(), plan(BillingTiming.IN_ARREARS, charges=(SEATS,)),
                          {"seats": PeriodUsage(quantity_max=D(8))})
    assert amounts(closed) == [
        ("base_fee", None, D(1), D("10.00"), D("10.00"), JAN, FEB),
        ("usage", "seats", D(5), D("0"), D("0.00"), JAN, FEB),
        ("usage", "seats", D(3), D("4.00"), D("12.00"), JAN, FEB),
    ]
    assert closed.total == D("22.00")


def test_month_end_anchor_and_rounding_per_line():
    # Anchor Jan 31: the period after [Jan 31, Feb 28) ends Mar 31. 333 calls at 0.0015 = 0.4995 -> 0.50 (half-even).
    jan31, feb28, mar31 = utc(2026, 1, 31), utc(2026, 2, 28), utc(2026, 3, 31)
    charge = replace(API, unit_price=D("0.0015"))
    closed = close_period(TENANT, sub(billing_anchor=jan31, current_period_start=jan31, current_period_end=feb28),
                          plan(charges=(charge,)), {"api_calls": PeriodUsage(quantity_sum=D(333))})
    assert [(ln.kind, ln.amount) for ln in closed.lines] == [("base_fee", D("10.00")), ("usage", D("0.50"))]
    assert closed.total == D("10.50")
    assert (closed.subscription.current_period_start, closed.subscription.current_period_end) == (feb28, mar31)


def test_trial_bills_no_fee_and_free_usage_and_then_becomes_active():
    # Trial [Jan 15, Feb 15), anchor = trial end. In advance: only the first paid period's fee, 10.00.
    trialing = sub(status=S.TRIALING, trial_days=31, trial_end=FEB, billing_anchor=FEB)
    closed = close_period(TENANT, trialing, plan(), {"api_calls": PeriodUsage(quantity_sum=D(1000))})
    assert amounts(closed) == [("base_fee", None, D(1), D("10.00"), D("10.00"), FEB, MAR)]
    assert closed.subscription.status is S.ACTIVE and closed.event == "subscription.trial_ended"
    assert (closed.subscription.current_period_start, closed.subscription.current_period_end) == (FEB, MAR)
    # In arrears a trial bills nothing at all.
    nothing = close_period(TENANT, trialing, plan(BillingTiming.IN_ARREARS), {"api_calls": PeriodUsage(D(1000))})
    assert nothing.lines == () and nothing.total == D(0)


def test_cancel_at_period_end_has_no_next_fee():
    # Usage 500 * 0.002 = 1.00; no in-advance fee for a period that never comes.
    closed = close_period(TENANT, sub(cancel_at_period_end=True), plan(),
                          {"api_calls": PeriodUsage(quantity_sum=D(500))})
    assert [(ln.kind, ln.amount) for ln in closed.lines] == [("usage", D("1.00"))]
    after = closed.subscription
    assert (after.status, after.canceled_at, after.cancel_at_period_end) == (S.CANCELED, FEB, False)
    assert closed.event == "subscription.canceled" and not is_due(after, utc(2030, 1, 1))


def test_cancel_at_period_end_in_arrears_still_bills_the_last_period():
    closed = close_period(TENANT, sub(cancel_at_period_end=True), plan(BillingTiming.IN_ARREARS), {})
    assert [(ln.kind, ln.amount, ln.period_start) for ln in closed.lines] == [
        ("base_fee", D("10.00"), JAN), ("usage", D("0.00"), JAN)]


def test_pending_downgrade_takes_effect_and_the_next_fee_uses_the_new_plan():
    # Usage of the closed period is priced by the old plan (0.002 * 1000 = 2.00); next fee 4.00 by the new one.
    basic = plan(fee="4.00", charges=(replace(API, unit_price=D("0.001")),), code="basic")
    closed = close_period(TENANT, sub(pending_plan_id=PLAN2, pending_change_at=FEB), plan(),
                          {"api_calls": PeriodUsage(quantity_sum=D(1000))}, next_plan=basic)
    assert [(ln.kind, ln.amount, ln.period_start) for ln in closed.lines] == [
        ("base_fee", D("4.00"), FEB), ("usage", D("2.00"), JAN)]
    after = closed.subscription
    assert (after.plan_id, after.pending_plan_id, after.pending_change_at) == (PLAN2, None, None)
    assert closed.event == "subscription.plan_changed"


def test_plan_change_to_another_interval_re_anchors_at_the_period_end():
    yearly = plan(fee="100.00", interval=IntervalUnit.YEAR, code="yearly")
    closed = close_period(TENANT, sub(pending_plan_id=PLAN2, pending_change_at=FEB), plan(), {}, next_plan=yearly)
    after = closed.subscription
    assert (after.billing_anchor, after.current_period_start, after.current_period_end) == (FEB, FEB, utc(2027, 2, 15))
    assert [(ln.kind, ln.amount) for ln in closed.lines if ln.kind == "base_fee"] == [("base_fee", D("100.00"))]


def test_paused_subscription_pays_no_fee_for_paused_time():
    paused = sub(status=S.PAUSED, paused_at=JAN)
    # In advance: no fee for a next period that starts paused.
    closed = close_period(TENANT, paused, plan(), {})
    assert [ln.kind for ln in closed.lines] == ["usage"] and closed.subscription.status is S.PAUSED
    assert closed.subscription.current_period_start == FEB
    # In arrears: paused since the period's start, no fee.
    assert [ln.kind for ln in close_period(TENANT, paused, plan(BillingTiming.IN_ARREARS), {}).lines] == ["usage"]


def test_invoice_request_id_is_deterministic():
    a = invoice_request_id(TENANT, SUB, JAN)
    assert a == invoice_request_id(TENANT, SUB, JAN) == close_period(TENANT, sub(), plan(), {}).invoice_request_id
    assert a != invoice_request_id(TENANT, SUB, FEB)
    assert a.version == 5
    # The contract with the invoicing service (docs/billing.md): uuid5 of the namespace and
    # "<tenant>/<subscription>/<period start ISO>", for any ids and times, never to change.
    for _ in range(50):
        t, s, when = uuid.uuid4(), uuid.uuid4(), utc(2026, 1, 31, 23, 59, 59)
        assert invoice_request_id(t, s, when) == uuid.uuid5(NAMESPACE, f"{t}/{s}/{when.isoformat()}")
    assert invoice_request_id(TENANT, SUB, JAN) == uuid.uuid5(
        uuid.UUID("5b0e7c52-2f3b-4c64-9a7e-0c1d3f6a8e21"),
        "00000000-0000-0000-0000-0000000000aa/00000000-0000-0000-0000-0000000000bb/2026-01-15T00:00:00+00:00")


@given(st.uuids(), st.uuids(), st.datetimes(min_value=datetime(1, 1, 1),
                                          max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
                                          timezones=st.just(timezone.utc)))
def test_invoice_request_id_is_uuid5_of_the_contract_for_any_time(t, s, when):
    got = invoice_request_id(t, s, when)
    want = uuid.uuid5(NAMESPACE, f"{t}/{s}/{when.isoformat()}")
    assert got == want and str(got) == str(want) and got.version == 5 and got.variant == want.variant
    assert hash(got) == hash(want) and got.is_safe == want.is_safe


def test_period_usage_is_the_dataclass():
    fast = period_usage(D("1.5"), 3, D("2"), None)
    assert fast == PeriodUsage(D("1.5"), 3, D("2"), None) and type(fast) is PeriodUsage
    assert period_usage(None, None, None, None, 7) == PeriodUsage(unique_count=7)
    assert hash(fast) == hash(PeriodUsage(D("1.5"), 3, D("2"), None))
    with pytest.raises(AttributeError):
        fast.event_count = 4  # frozen like any other


def test_is_due_and_refusals():
    assert is_due(sub(), FEB) and not is_due(sub(), utc(2026, 2, 14, 23, 59))
    assert not is_due(sub(status=S.PENDING, current_period_start=None, current_period_end=None), MAR)
    with pytest.raises(ValueError):
        close_period(TENANT, sub(status=S.CANCELED), plan(), {})
    with pytest.raises(ValueError, match="pending change"):
        close_period(TENANT, sub(pending_plan_id=PLAN2, pending_change_at=FEB), plan(), {})


def test_evolve_is_replace_without_its_cost():
    # The run's hot path builds the next state with _evolve instead of dataclasses.replace:
    # it must give the very same (equal, frozen, independent) subscription, and refuse a
    # name that is not a field instead of adding an attribute.
    from billing.domain.invoicing import _evolve

    s = sub(pending_plan_id=PLAN2, metadata={"k": "v"})
    changes = dict(current_period_start=FEB, current_period_end=MAR, pending_plan_id=None, status=S.ACTIVE)
    new = _evolve(s, **changes)
    assert new == replace(s, **changes)
    assert new.current_period_start == FEB and s.current_period_start == JAN
    with pytest.raises(AttributeError):
        new.status = S.CANCELED  # still frozen
    with pytest.raises(TypeError, match="current_period_ned"):
        _evolve(s, current_period_ned=MAR)

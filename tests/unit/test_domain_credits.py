"""billing.domain.credits: the burn-down of prepaid grants against an invoice's total.

Every amount below was worked out by hand; the arithmetic is in the comments.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from billing.domain.credits import CreditBook, Grant, apply_credits, burn_order, check_grant, status_of
from billing.domain.errors import ValidationError
from billing.domain.invoicing import close_period
from billing.domain.lifecycle import SubscriptionStatus as S
from billing.domain.plans import BillingTiming, IntervalUnit, PlanSpec
from billing.domain.pricing import total
from billing.domain.subscriptions import Subscription


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


JAN, FEB, MAR = utc(2026, 1, 1), utc(2026, 2, 1), utc(2026, 3, 1)
PERIOD = (JAN, FEB)
SUB = uuid.UUID("00000000-0000-0000-0000-0000000000bb")


def gid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def grant(n: int, remaining: str, *, priority: int = 0, effective=JAN - timedelta(days=1), expires=None,
          currency="EUR", sub=SUB, customer="cust-1") -> Grant:
    return Grant(gid(n), customer, sub, currency, priority, effective, expires, D(remaining))


def burn(due: str, grants, at=FEB):
    return apply_credits(D(due), grants, currency="EUR", at=at, period=PERIOD)


def test_one_grant_smaller_than_the_total_is_burned_whole():
    out = burn("30.00", [grant(1, "12.50")])
    # 30.00 due, 12.50 of credit: one line of -12.50, the grant is empty, 17.50 left to pay.
    assert [(ln.kind, ln.amount, ln.quantity, ln.unit_price) for ln in out.lines] == [
        ("credit", D("-12.50"), D(1), D("-12.50"))]
    assert str(gid(1)) in out.lines[0].description
    assert (out.lines[0].period_start, out.lines[0].period_end) == PERIOD
    assert out.balances == {gid(1): D("0.00")} and out.credited == D("12.50")
    assert D("30.00") + total(out.lines) == D("17.50")


def test_a_grant_larger_than_the_total_stops_at_zero_and_keeps_the_rest():
    out = burn("30.00", [grant(1, "100.00")])
    # 100.00 of credit, 30.00 due: the invoice is 0.00, 70.00 remains.
    assert [ln.amount for ln in out.lines] == [D("-30.00")]
    assert out.balances[gid(1)] == D("70.00") and out.applied[0].remaining == D("70.00")


def test_burn_order_priority_then_earliest_expiry_then_oldest_then_id():
    g_prio = grant(1, "5.00", priority=1)  # priority 1: after every priority-0 grant
    g_never = grant(2, "5.00", priority=0)  # no expiry: after the priority-0 grants that expire
    g_late = grant(3, "5.00", priority=0, expires=utc(2026, 6, 1))
    g_soon = grant(4, "5.00", priority=0, expires=utc(2026, 4, 1))  # earliest expiry: first
    g_old = grant(6, "5.00", priority=0, effective=utc(2025, 1, 1))  # no expiry, older than g_never
    g_twin = grant(5, "5.00", priority=0)  # as old as g_never: the smaller id (2) first
    ordered = sorted([g_prio, g_never, g_late, g_soon, g_old, g_twin], key=burn_order)
    assert [g.id.int for g in ordered] == [4, 3, 6, 2, 5, 1]
    # 17.00 due: 5 + 5 + 5 + 2 of the fourth in that order.
    out = burn("17.00", [g_prio, g_never, g_late, g_soon, g_old, g_twin])
    assert [(a.grant_id.int, a.amount) for a in out.applied] == [(4, D("5.00")), (3, D("5.00")), (6, D("5.00")),
                                                                  (2, D("2.00"))]
    assert out.balances[gid(2)] == D("3.00") and out.balances[gid(1)] == D("5.00")


def test_an_expired_grant_expires_its_rest_and_is_not_applied():
    out = burn("30.00", [grant(1, "8.00", expires=FEB), grant(2, "10.00")])
    # Grant 1 expired at the period's end (expiry <= billing time): its 8.00 expires; grant 2 pays 10.00.
    assert [(e.grant_id.int, e.amount, e.at) for e in out.expired] == [(1, D("8.00"), FEB)]
    assert [(a.grant_id.int, a.amount) for a in out.applied] == [(2, D("10.00"))]
    assert out.balances == {gid(1): D(0), gid(2): D("0.00")}


def test_not_yet_effective_and_other_currency_grants_wait():
    out = burn("30.00", [grant(1, "8.00", effective=FEB + timedelta(seconds=1)), grant(2, "10.00", currency="USD")])
    assert not out.lines and not out.expired
    assert out.balances == {gid(1): D("8.00"), gid(2): D("10.00")}
    # Effective exactly at the period's end: it applies.
    assert burn("30.00", [grant(1, "8.00", effective=FEB)]).credited == D("8.00")


def test_nothing_due_burns_nothing_but_still_expires():
    out = burn("-5.00", [grant(1, "8.00"), grant(2, "3.00", expires=JAN)])
    assert not out.applied and [e.grant_id.int for e in out.expired] == [2]
    assert burn("0.00", [grant(1, "8.00")]).lines == ()


def test_book_shares_a_customer_grant_between_subscriptions_and_appends_the_line_last():
    spec = PlanSpec("pro", "Pro", "", "EUR", IntervalUnit.MONTH, 1, D("20.00"), BillingTiming.IN_ARREARS, 0, ())
    customer_grant = grant(1, "30.00", sub=None)
    book = CreditBook([customer_grant, grant(2, "5.00", sub=uuid.UUID(int=99))])
    subs = [Subscription(id=uuid.UUID(int=n), customer_id="cust-1", plan_id=uuid.UUID(int=7), status=S.ACTIVE,
                         created_at=JAN, start_at=JAN, trial_days=0, billing_anchor=JAN, current_period_start=JAN,
                         current_period_end=FEB) for n in (10, 11)]
    first, burned = book.apply(subs[0].id, "cust-1", close_period(uuid.UUID(int=1), subs[0], spec, {}))
    # 20.00 base fee, 20.00 of the customer's 30.00 credit: total 0.00, 10.00 left for the next one.
    assert [ln.kind for ln in first.lines] == ["base_fee", "credit"] and first.total == D("0.00")
    assert burned is not None and burned.applied[0].remaining == D("10.00")
    second, _ = book.apply(subs[1].id, "cust-1", close_period(uuid.UUID(int=1), subs[1], spec, {}))
    assert second.total == D("10.00") and second.lines[-1].amount == D("-10.00")
    third, nothing = book.apply(subs[1].id, "cust-1", close_period(uuid.UUID(int=1), subs[1], spec, {}))
    assert nothing is None and third.total == D("20.00")  # the customer's grant is spent; grant 2 is not theirs


def test_status_of():
    assert status_of(D(5), False, JAN, None, FEB) == "active"
    assert status_of(D(5), False, MAR, None, FEB) == "scheduled"
    assert status_of(D(0), False, JAN, None, FEB) == "depleted"
    assert status_of(D(5), False, JAN, FEB, FEB) == "expired"
    assert status_of(D(5), True, JAN, FEB, MAR) == "voided"


def test_check_grant_reports_every_bad_field():
    with pytest.raises(ValidationError) as err:
        check_grant(amount="-1", currency="EURO", priority=-1, effective_at=FEB, expires_at=JAN, description="")
    assert {f for f, _ in err.value.violations} == {"amount", "currency", "priority", "expires_at"}
    with pytest.raises(ValidationError) as err:
        check_grant(amount="0", currency="EUR", priority=0, effective_at=JAN, expires_at=None, description="")
    assert err.value.field == "amount"
    with pytest.raises(ValidationError) as err:
        check_grant(amount="1.005", currency="EUR", priority=0, effective_at=JAN, expires_at=None, description="")
    assert err.value.field == "amount" and "decimal places" in err.value.message
    assert check_grant(amount="1.50", currency="EUR", priority=3, effective_at=JAN, expires_at=FEB,
                       description="promo").amount == D("1.50")


cents = st.integers(min_value=0, max_value=10_000_00).map(lambda n: D(n).scaleb(-2))
grant_st = st.tuples(st.integers(0, 3), st.integers(1, 500_00).map(lambda n: D(n).scaleb(-2)),
                     st.one_of(st.none(), st.integers(-40, 40)), st.integers(-40, 40))


@given(dues=st.lists(st.integers(-100_00, 2_000_00).map(lambda n: D(n).scaleb(-2)), min_size=1, max_size=6),
       specs=st.lists(grant_st, min_size=0, max_size=6))
def test_credits_never_drive_a_total_below_zero_and_balances_add_up(dues, specs):
    grants = [Grant(gid(i + 1), "c", SUB, "EUR", p, JAN + timedelta(days=eff),
                    None if exp is None else JAN + timedelta(days=eff + abs(exp) + 1), amount)
              for i, (p, amount, exp, eff) in enumerate(specs)]
    granted = {g.id: g.remaining for g in grants}
    applied = {g.id: D(0) for g in grants}
    expired = {g.id: D(0) for g in grants}
    book = {g.id: g for g in grants}
    for n, due in enumerate(dues):  # one invoice a month, balances carried over
        at = JAN + timedelta(days=30 * n)
        out = apply_credits(due, list(book.values()), currency="EUR", at=at, period=(at - timedelta(days=30), at))
        after = due + total(out.lines)
        assert after >= 0 if due >= 0 else after == due  # never below zero; nothing credited when nothing is due
        assert all(ln.amount < 0 and ln.kind == "credit" for ln in out.lines)
        for a in out.applied:
            applied[a.grant_id] += a.amount
        for e in out.expired:
            expired[e.grant_id] += e.amount
        book = {i: Grant(g.id, g.customer_id, g.subscription_id, g.currency, g.priority, g.effective_at,
                         g.expires_at, out.balances[i]) for i, g in book.items()}
        if after > 0:  # something left to pay: every usable grant was spent
            assert all(g.remaining == 0 or g.effective_at > at for g in book.values())
    for g in book.values():
        assert g.remaining >= 0
        assert applied[g.id] + expired[g.id] + g.remaining == granted[g.id]


def test_book_restore_undoes_what_a_dropped_subscription_burned():
    book = CreditBook([grant(1, "30.00", sub=None)])
    spec = PlanSpec("pro", "Pro", "", "EUR", IntervalUnit.MONTH, 1, D("20.00"), BillingTiming.IN_ARREARS, 0, ())
    sub = Subscription(id=SUB, customer_id="cust-1", plan_id=uuid.UUID(int=7), status=S.ACTIVE, created_at=JAN,
                       start_at=JAN, trial_days=0, billing_anchor=JAN, current_period_start=JAN, current_period_end=FEB)
    mark = book.mark()
    first, _ = book.apply(sub.id, "cust-1", close_period(uuid.UUID(int=1), sub, spec, {}))
    assert first.total == D("0.00")
    book.restore(mark)
    again, burned = book.apply(sub.id, "cust-1", close_period(uuid.UUID(int=1), sub, spec, {}))
    assert again.total == D("0.00") and burned is not None and burned.applied[0].remaining == D("10.00")

"""Which period a usage event belongs to, and when a subscription takes none (domain/usage_rules.py)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal as D

from hypothesis import given, strategies as st

from billing.domain.periods import from_us, period_containing, to_us
from billing.domain.plans import BillingTiming, IntervalUnit, PlanSpec
from billing.domain.usage_rules import UsageSubscription, refusal

MONTHLY = PlanSpec("pro", "Pro", "", "EUR", IntervalUnit.MONTH, 1, D("10"), BillingTiming.IN_ARREARS, 0, ())
ANCHOR = datetime(2026, 1, 31, tzinfo=timezone.utc)


def us(*args: int) -> int:
    return to_us(datetime(*args, tzinfo=timezone.utc))


def sub(**over) -> UsageSubscription:
    """Started on Jan 31; current period Mar 31 - Apr 30."""
    fields = dict(plan_id=uuid.uuid4(), status="active", start_us=to_us(ANCHOR), anchor=ANCHOR,
                  period_start_us=us(2026, 3, 31), period_end_us=us(2026, 4, 30), canceled_us=None)
    fields.update(over)
    return UsageSubscription(**fields)


def test_the_current_period_is_not_late():
    assert sub().attribute(MONTHLY, us(2026, 4, 10)) == (us(2026, 3, 31), us(2026, 4, 30), False)


def test_before_the_current_period_is_late_and_clamped_to_the_subscription():
    # Feb 28 - Mar 31 was closed and billed: late.
    assert sub().attribute(MONTHLY, us(2026, 3, 1)) == (us(2026, 2, 28), us(2026, 3, 31), True)
    # The first period starts at the subscription's start, never before it.
    started_later = sub(start_us=us(2026, 2, 10))
    assert started_later.attribute(MONTHLY, us(2026, 2, 12)) == (us(2026, 2, 10), us(2026, 2, 28), True)


def test_after_the_current_period_is_a_later_period_not_yet_billed():
    assert sub().attribute(MONTHLY, us(2026, 5, 3)) == (us(2026, 4, 30), us(2026, 5, 31), False)


def test_usage_of_a_canceled_subscription_is_always_late():
    canceled = sub(status="canceled", canceled_us=us(2026, 4, 20))
    assert canceled.attribute(MONTHLY, us(2026, 4, 10)) == (us(2026, 3, 31), us(2026, 4, 30), True)


def test_refusals_name_the_reason():
    assert refusal(sub(period_start_us=None, period_end_us=None, status="pending"), us(2026, 4, 1)) \
        == "subscription_not_started"
    canceled = sub(canceled_us=us(2026, 4, 20))
    assert refusal(canceled, us(2026, 4, 20)) == "subscription_canceled"
    assert refusal(canceled, us(2026, 4, 19)) is None


def test_pauses_past_current_and_scheduled_to_end():
    paused = sub(paused_us=us(2026, 4, 10), resumes_us=us(2026, 4, 15), pauses=((us(2026, 4, 1), us(2026, 4, 3)),))
    assert refusal(paused, us(2026, 4, 2)) == "subscription_paused"  # a past pause
    assert refusal(paused, us(2026, 4, 5)) is None
    assert refusal(paused, us(2026, 4, 12)) == "subscription_paused"  # the current pause
    assert refusal(paused, us(2026, 4, 15)) is None  # its scheduled end has come, carried out or not
    assert refusal(sub(paused_us=us(2026, 4, 10)), us(2027, 1, 1)) == "subscription_paused"  # no end


@given(st.integers(min_value=us(2026, 1, 31), max_value=us(2028, 1, 1)))
def test_an_event_lies_in_its_period_and_the_period_is_the_calendar_one_or_a_clamped_part(t):
    s = sub()
    start, end, late = s.attribute(MONTHLY, t)
    assert start <= t < end
    assert late == (t < s.period_start_us)
    full = period_containing(ANCHOR, MONTHLY.interval, 1, from_us(t))
    assert to_us(full[0]) <= start and end <= to_us(full[1])

"""billing.domain.subscriptions: create, activate, pause, resume, cancel, change_plan.

Every expected date below was worked out by hand (comments show the arithmetic);
all datetimes are aware UTC.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from billing.domain.errors import PreconditionFailed, TransitionRefused, ValidationError
from billing.domain.lifecycle import Action, SubscriptionStatus
from billing.domain.periods import add_interval, period_containing
from billing.domain.plans import IntervalUnit, PlanInput, PlanSpec, is_upgrade
from billing.domain.plan_validation import parse_plan
from billing.domain.subscriptions import (
    CUSTOMER_ID_MAX,
    MAX_TRIAL_DAYS,
    METADATA_KEY_MAX,
    METADATA_MAX_KEYS,
    METADATA_VALUE_MAX,
    START_WINDOW,
    CancelMode,
    Change,
    ChangeTiming,
    Subscription,
    activate,
    cancel,
    change_plan,
    create,
    pause,
    resume,
    resume_as_scheduled,
    resume_is_due,
)

UTC = timezone.utc
S = SubscriptionStatus
US = timedelta(microseconds=1)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_plan(interval: str = "month", count: int = 1, fee: str = "10.00", currency: str = "USD",
              trial_days: int = 0, code: str = "p") -> PlanSpec:
    return parse_plan(PlanInput(code=code, name=code.upper(), currency=currency, interval=interval,
                                interval_count=count, base_fee=fee, billing_timing="in_advance",
                                trial_days=trial_days))


MONTHLY = make_plan()  # $10 / month
SUB_ID = uuid.UUID(int=1)
PLAN_A = uuid.UUID(int=0xA)
PLAN_B = uuid.UUID(int=0xB)
PLAN_C = uuid.UUID(int=0xC)

JAN15 = utc(2024, 1, 15, 10, 0)  # the running example's start


def new(plan: PlanSpec = MONTHLY, *, now: datetime = JAN15, start_at: datetime | None = None,
        billing_anchor: datetime | None = None, trial_days: int | None = None, customer_id: str = "cus_1",
        metadata=None) -> Change:
    return create(subscription_id=SUB_ID, customer_id=customer_id, plan_id=PLAN_A, plan=plan, now=now,
                  start_at=start_at, billing_anchor=billing_anchor, trial_days=trial_days,
                  metadata={} if metadata is None else metadata)


def sub_in(status: S, **kw) -> Subscription:
    """A subscription in `status` with a monthly period [2024-01-15T10, 2024-02-15T10)."""
    base = dict(id=SUB_ID, customer_id="cus_1", plan_id=PLAN_A, status=status, created_at=JAN15, start_at=JAN15,
                billing_anchor=JAN15, trial_days=0, current_period_start=JAN15,
                current_period_end=utc(2024, 2, 15, 10))
    if status is S.PENDING:
        base.update(billing_anchor=None, current_period_start=None, current_period_end=None)
    if status is S.TRIALING:
        base.update(trial_days=14, trial_end=utc(2024, 1, 29, 10), billing_anchor=utc(2024, 1, 29, 10),
                    current_period_end=utc(2024, 1, 29, 10))
    if status is S.PAUSED:
        base.update(paused_at=utc(2024, 1, 20))
    if status is S.CANCELED:
        base.update(canceled_at=utc(2024, 1, 20))
    base.update(kw)
    return Subscription(**base)


def field_of(excinfo) -> str:
    return excinfo.value.field


# =========================================================================== create


def test_create_defaults():
    meta = {"team": "blue"}
    ch = new(metadata=meta)
    s = ch.subscription
    assert ch.event == "subscription.created"
    assert s.status is S.PENDING
    assert s.id == SUB_ID and s.plan_id == PLAN_A and s.customer_id == "cus_1"
    assert s.created_at == JAN15 and s.start_at == JAN15  # no start_at: starts now
    assert s.billing_anchor is None  # chosen at activation
    assert s.trial_days == 0
    assert s.current_period_start is s.current_period_end is s.trial_end is None
    assert s.cancel_at_period_end is False and s.pending_plan_id is None
    assert s.metadata == meta and s.metadata is not meta  # copied


def test_create_takes_plan_trial_days_unless_overridden():
    plan = make_plan(trial_days=7)
    assert new(plan).subscription.trial_days == 7
    assert new(plan, trial_days=0).subscription.trial_days == 0
    assert new(plan, trial_days=30).subscription.trial_days == 30


@pytest.mark.parametrize("customer_id, message", [
    ("", "is required"),
    ("   ", "is required"),
    ("\t \n", "is required"),
    ("a" * (CUSTOMER_ID_MAX + 1), "printable"),  # 256
    ("cus\x00x", "printable"),
    ("cus\nx", "printable"),
    ("cus\x7f", "printable"),
    ("cus\u200bx", "printable"),  # zero-width space: a format character
])
def test_create_rejects_bad_customer_id(customer_id, message):
    with pytest.raises(ValidationError) as e:
        new(customer_id=customer_id)
    assert field_of(e) == "customer_id"
    assert message in e.value.message


@pytest.mark.parametrize("customer_id", ["c", "a" * CUSTOMER_ID_MAX, "cus 42", "клиент-7", "üñí©ødé"])
def test_create_accepts_good_customer_id(customer_id):
    assert CUSTOMER_ID_MAX == 255
    assert new(customer_id=customer_id).subscription.customer_id == customer_id


@pytest.mark.parametrize("days", [-1, MAX_TRIAL_DAYS + 1, -730, 10_000])
def test_create_rejects_trial_days_out_of_bounds(days):
    assert MAX_TRIAL_DAYS == 730
    with pytest.raises(ValidationError) as e:
        new(trial_days=days)
    assert field_of(e) == "trial_days"


@pytest.mark.parametrize("days", [0, 1, 730])
def test_create_accepts_trial_days_bounds(days):
    assert new(trial_days=days).subscription.trial_days == days


def test_create_start_window_is_366_days_either_way_inclusive():
    now = utc(2024, 6, 1)
    assert START_WINDOW == timedelta(days=366)
    assert new(now=now, start_at=utc(2023, 6, 1)).subscription.start_at == utc(2023, 6, 1)  # 366 days back
    assert new(now=now, start_at=utc(2025, 6, 2)).subscription.start_at == utc(2025, 6, 2)  # 366 days ahead
    for bad in (utc(2023, 6, 1) - US, utc(2025, 6, 2) + US, utc(2020, 1, 1), utc(2030, 1, 1)):
        with pytest.raises(ValidationError) as e:
            new(now=now, start_at=bad)
        assert field_of(e) == "start_at"


def test_create_billing_anchor_window_without_trial():
    # monthly, start 2024-01-15T10:00: anchor must be in [start, 2024-02-15T10:00]
    ok = [JAN15, utc(2024, 2, 1), utc(2024, 2, 15, 10)]
    for anchor in ok:
        assert new(billing_anchor=anchor).subscription.billing_anchor == anchor
    for bad in (JAN15 - US, utc(2024, 1, 1), utc(2024, 2, 15, 10) + US, utc(2024, 3, 1)):
        with pytest.raises(ValidationError) as e:
            new(billing_anchor=bad)
        assert field_of(e) == "billing_anchor"


def test_create_billing_anchor_window_with_trial():
    # 14-day trial: trial ends 2024-01-29T10:00; anchor must be in [01-29T10, 02-29T10] (leap year)
    for anchor in (utc(2024, 1, 29, 10), utc(2024, 2, 1), utc(2024, 2, 29, 10)):
        assert new(trial_days=14, billing_anchor=anchor).subscription.billing_anchor == anchor
    for bad in (JAN15, utc(2024, 1, 29, 10) - US, utc(2024, 2, 29, 10) + US):
        with pytest.raises(ValidationError) as e:
            new(trial_days=14, billing_anchor=bad)
        assert field_of(e) == "billing_anchor"


def test_create_billing_anchor_window_uses_plan_interval_and_post_dated_start():
    weekly = make_plan("week")
    start = utc(2024, 3, 1)
    # start 2024-03-01 (post-dated), weekly: anchor in [03-01, 03-08]
    assert new(weekly, start_at=start, billing_anchor=utc(2024, 3, 8)).subscription.start_at == start
    with pytest.raises(ValidationError) as e:
        new(weekly, start_at=start, billing_anchor=utc(2024, 3, 8) + US)
    assert field_of(e) == "billing_anchor"
    # month-end start: 2024-01-31 + 1 month = 2024-02-29 (clamped)
    jan31 = utc(2024, 1, 31)
    assert new(now=jan31, billing_anchor=utc(2024, 2, 29)).subscription.billing_anchor == utc(2024, 2, 29)
    with pytest.raises(ValidationError):
        new(now=jan31, billing_anchor=utc(2024, 3, 1))


def test_create_metadata_limits():
    assert (METADATA_MAX_KEYS, METADATA_KEY_MAX, METADATA_VALUE_MAX) == (50, 40, 500)
    fifty = {f"k{i}": "v" for i in range(50)}
    assert len(new(metadata=fifty).subscription.metadata) == 50
    with pytest.raises(ValidationError) as e:
        new(metadata={f"k{i}": "v" for i in range(51)})
    assert field_of(e) == "metadata"

    assert new(metadata={"k" * 40: "v"}).subscription.metadata == {"k" * 40: "v"}
    with pytest.raises(ValidationError) as e:
        new(metadata={"k" * 41: "v"})
    assert field_of(e) == f"metadata[{'k' * 40!r}]"  # key truncated to 40 in the field path
    for bad_key in ("", "a\nb", "a\x00"):
        with pytest.raises(ValidationError) as e:
            new(metadata={bad_key: "v"})
        assert field_of(e).startswith("metadata[")

    assert new(metadata={"k": "v" * 500}).subscription.metadata["k"] == "v" * 500
    with pytest.raises(ValidationError) as e:
        new(metadata={"k": "v" * 501})
    assert field_of(e) == "metadata['k']"


def test_create_reports_the_first_failing_field():
    # customer_id is checked before start_at, start_at before trial_days, trial_days before the anchor
    with pytest.raises(ValidationError) as e:
        new(customer_id="", start_at=utc(2030, 1, 1), trial_days=-1)
    assert field_of(e) == "customer_id"
    with pytest.raises(ValidationError) as e:
        new(start_at=utc(2030, 1, 1), trial_days=-1)
    assert field_of(e) == "start_at"
    with pytest.raises(ValidationError) as e:
        new(trial_days=-1, billing_anchor=utc(2020, 1, 1))
    assert field_of(e) == "trial_days"
    with pytest.raises(ValidationError) as e:
        new(billing_anchor=utc(2020, 1, 1), metadata={"k": "v" * 501})
    assert field_of(e) == "billing_anchor"


def test_create_reports_every_failing_field_at_once():
    with pytest.raises(ValidationError) as e:
        new(customer_id="", start_at=utc(2030, 1, 1), trial_days=-1, metadata={"k": "v" * 501})
    assert [f for f, _ in e.value.violations] == ["customer_id", "start_at", "trial_days", "metadata['k']"]


# ========================================================================= activate


def test_activate_pending_without_trial_no_anchor():
    s = new().subscription
    ch = activate(s, MONTHLY, JAN15)
    a = ch.subscription
    assert ch.event == "subscription.activated"
    assert a.status is S.ACTIVE
    assert a.billing_anchor == JAN15  # no anchor asked: the start
    assert (a.current_period_start, a.current_period_end) == (JAN15, utc(2024, 2, 15, 10))
    assert a.trial_end is None
    assert s.status is S.PENDING  # the input is untouched


def test_activate_with_anchor_gives_shorter_first_period():
    s = new(billing_anchor=utc(2024, 2, 1)).subscription
    a = activate(s, MONTHLY, JAN15).subscription
    assert a.billing_anchor == utc(2024, 2, 1)
    # prorated first period [01-15T10:00, 02-01T00:00): 16 days 14 hours
    assert (a.current_period_start, a.current_period_end) == (JAN15, utc(2024, 2, 1))
    assert a.current_period_end - a.current_period_start == timedelta(days=16, hours=14)
    # the following periods are whole months from the anchor
    assert period_containing(a.billing_anchor, IntervalUnit.MONTH, 1, a.current_period_end) == (
        utc(2024, 2, 1), utc(2024, 3, 1))


def test_activate_anchor_equal_to_latest_allowed_gives_full_first_period():
    s = new(billing_anchor=utc(2024, 2, 15, 10)).subscription
    a = activate(s, MONTHLY, JAN15).subscription
    assert (a.current_period_start, a.current_period_end) == (JAN15, utc(2024, 2, 15, 10))


def test_activate_month_end_start_clamps_then_returns_to_31st():
    jan31 = utc(2024, 1, 31)
    a = activate(new(now=jan31).subscription, MONTHLY, jan31).subscription
    assert (a.current_period_start, a.current_period_end) == (jan31, utc(2024, 2, 29))  # leap year
    nxt = period_containing(a.billing_anchor, IntervalUnit.MONTH, 1, a.current_period_end)
    assert nxt == (utc(2024, 2, 29), utc(2024, 3, 31))  # back to the 31st, not drifting to the 29th
    assert period_containing(a.billing_anchor, IntervalUnit.MONTH, 1, nxt[1]) == (utc(2024, 3, 31), utc(2024, 4, 30))


def test_activate_with_month_end_anchor():
    start = utc(2024, 1, 20, 8)
    a = activate(new(now=start, billing_anchor=utc(2024, 1, 31)).subscription, MONTHLY, start).subscription
    assert (a.current_period_start, a.current_period_end) == (start, utc(2024, 1, 31))
    p2 = period_containing(a.billing_anchor, IntervalUnit.MONTH, 1, a.current_period_end)
    p3 = period_containing(a.billing_anchor, IntervalUnit.MONTH, 1, p2[1])
    assert p2 == (utc(2024, 1, 31), utc(2024, 2, 29))
    assert p3 == (utc(2024, 2, 29), utc(2024, 3, 31))


def test_activate_weekly_and_daily_examples():
    # weekly: start Mon 2024-01-15T10, anchor Thu 2024-01-18T00 -> [01-15T10, 01-18T00)
    weekly = make_plan("week")
    a = activate(new(weekly, billing_anchor=utc(2024, 1, 18)).subscription, weekly, JAN15).subscription
    assert (a.current_period_start, a.current_period_end) == (JAN15, utc(2024, 1, 18))
    # every 3 days, no anchor: [01-15T10, 01-18T10)
    daily3 = make_plan("day", 3)
    a = activate(new(daily3).subscription, daily3, JAN15).subscription
    assert (a.current_period_start, a.current_period_end) == (JAN15, utc(2024, 1, 18, 10))
    # yearly from a leap day: [2024-02-29, 2025-02-28)
    yearly = make_plan("year", fee="100.00")
    feb29 = utc(2024, 2, 29)
    a = activate(new(yearly, now=feb29).subscription, yearly, feb29).subscription
    assert (a.current_period_start, a.current_period_end) == (feb29, utc(2025, 2, 28))


def test_activate_pending_with_trial():
    s = new(trial_days=14).subscription
    ch = activate(s, MONTHLY, JAN15)
    t = ch.subscription
    assert ch.event == "subscription.trial_started"
    assert t.status is S.TRIALING
    assert t.trial_end == utc(2024, 1, 29, 10)  # 15 + 14 = 29
    assert (t.current_period_start, t.current_period_end) == (JAN15, utc(2024, 1, 29, 10))
    assert t.billing_anchor == t.trial_end  # no anchor asked: the trial's end


def test_activate_pending_with_plan_trial_and_asked_anchor():
    plan = make_plan(trial_days=14)
    t = activate(new(plan, billing_anchor=utc(2024, 2, 1)).subscription, plan, JAN15).subscription
    assert t.status is S.TRIALING
    assert t.trial_end == utc(2024, 1, 29, 10)
    assert (t.current_period_start, t.current_period_end) == (JAN15, utc(2024, 1, 29, 10))
    assert t.billing_anchor == utc(2024, 2, 1)  # the asked anchor is kept


def test_trial_across_month_end_and_leap_day():
    start = utc(2024, 2, 20)
    t = activate(new(now=start, trial_days=10).subscription, MONTHLY, start).subscription
    assert t.trial_end == utc(2024, 3, 1)  # Feb 20 + 10 days in a leap year: 21..29 is 9 days, then Mar 1


def test_activate_trialing_ends_the_trial_early():
    t = activate(new(trial_days=14).subscription, MONTHLY, JAN15).subscription
    at = utc(2024, 1, 20, 12)
    ch = activate(t, MONTHLY, at)
    a = ch.subscription
    assert ch.event == "subscription.trial_ended"
    assert ch.details == {"ended_early": "true"}
    assert a.status is S.ACTIVE
    assert a.trial_end == at and a.billing_anchor == at
    assert (a.current_period_start, a.current_period_end) == (at, utc(2024, 2, 20, 12))


@pytest.mark.parametrize("status", [S.ACTIVE, S.PAUSED, S.CANCELED])
def test_activate_refused_outside_pending_and_trialing(status):
    with pytest.raises(TransitionRefused) as e:
        activate(sub_in(status), MONTHLY, utc(2024, 1, 20))
    assert e.value.current_state is status
    assert e.value.action is Action.ACTIVATE
    assert str(e.value) == f"cannot activate a subscription in state '{status.value}'"


@pytest.mark.parametrize("status", [S.ACTIVE, S.PAUSED, S.CANCELED])
def test_activate_refused_names_the_state_even_after_a_trial(status):
    s = sub_in(status, trial_days=14)
    with pytest.raises(TransitionRefused) as e:
        activate(s, MONTHLY, utc(2024, 1, 20))
    assert e.value.current_state is status
    assert f"'{status.value}'" in str(e.value)


@pytest.mark.parametrize("status", [S.ACTIVE, S.PAUSED, S.CANCELED])
def test_activate_refusal_names_the_activate_action_after_a_trial(status):
    with pytest.raises(TransitionRefused) as e:
        activate(sub_in(status, trial_days=14), MONTHLY, utc(2024, 1, 20))
    assert e.value.action is Action.ACTIVATE
    assert str(e.value) == f"cannot activate a subscription in state '{status.value}'"


# ==================================================================== pause/resume


def test_pause_active():
    now = utc(2024, 1, 20, 9)
    ch = pause(sub_in(S.ACTIVE), now, None)
    p = ch.subscription
    assert ch.event == "subscription.paused" and ch.details == {}
    assert p.status is S.PAUSED and p.paused_at == now and p.pause_resumes_at is None
    assert (p.current_period_start, p.current_period_end) == (JAN15, utc(2024, 2, 15, 10))  # untouched


def test_pause_with_resumes_at():
    now, later = utc(2024, 1, 20, 9), utc(2024, 2, 1)
    ch = pause(sub_in(S.ACTIVE), now, later)
    assert ch.subscription.pause_resumes_at == later
    assert ch.details == {"resumes_at": "2024-02-01T00:00:00+00:00"}


@pytest.mark.parametrize("resumes_at", [utc(2024, 1, 19), utc(2024, 1, 20, 9)])  # past, and exactly now
def test_pause_rejects_resumes_at_not_in_the_future(resumes_at):
    with pytest.raises(ValidationError) as e:
        pause(sub_in(S.ACTIVE), utc(2024, 1, 20, 9), resumes_at)
    assert field_of(e) == "resumes_at"


@pytest.mark.parametrize("status", [S.PENDING, S.TRIALING, S.PAUSED, S.CANCELED])
def test_pause_refused_outside_active(status):
    with pytest.raises(TransitionRefused) as e:
        pause(sub_in(status), utc(2024, 1, 20), None)
    assert e.value.current_state is status and e.value.action is Action.PAUSE


def test_pause_refusal_comes_before_resumes_at_validation():
    with pytest.raises(TransitionRefused):
        pause(sub_in(S.CANCELED), utc(2024, 1, 20), utc(2024, 1, 1))


def test_resume_paused():
    s = sub_in(S.PAUSED, paused_at=utc(2024, 1, 20), pause_resumes_at=utc(2024, 2, 1))
    ch = resume(s, utc(2024, 1, 25))
    r = ch.subscription
    assert ch.event == "subscription.resumed"
    assert ch.details == {"paused_at": "2024-01-20T00:00:00+00:00"}
    assert r.status is S.ACTIVE and r.paused_at is None and r.pause_resumes_at is None


def test_scheduled_resume_takes_effect_at_resumes_at_not_when_carried_out():
    s = sub_in(S.PAUSED, paused_at=utc(2024, 1, 20), pause_resumes_at=utc(2024, 2, 1))
    assert not resume_is_due(s, utc(2024, 2, 1) - US) and resume_is_due(s, utc(2024, 2, 1))
    ch = resume_as_scheduled(s, utc(2024, 2, 3, 12))  # the job ran two and a half days late
    assert ch.event == "subscription.resumed" and ch.subscription == resume(s, utc(2024, 2, 1)).subscription
    assert ch.details == {"paused_at": "2024-01-20T00:00:00+00:00", "resumed_at": "2024-02-01T00:00:00+00:00",
                          "trigger": "scheduled"}
    assert ch.subscription.status is S.ACTIVE and ch.subscription.pause_resumes_at is None


def test_scheduled_resume_is_refused_when_not_due():
    early = sub_in(S.PAUSED, paused_at=utc(2024, 1, 20), pause_resumes_at=utc(2024, 2, 1))
    with pytest.raises(PreconditionFailed):
        resume_as_scheduled(early, utc(2024, 1, 31))
    with pytest.raises(PreconditionFailed):  # a pause without resumes_at never resumes on its own
        resume_as_scheduled(sub_in(S.PAUSED, paused_at=utc(2024, 1, 20)), utc(2030, 1, 1))
    assert not resume_is_due(sub_in(S.PAUSED, paused_at=utc(2024, 1, 20)), utc(2030, 1, 1))
    # already resumed (or canceled): a second attempt is refused and changes nothing
    done = resume_as_scheduled(early, utc(2024, 2, 2)).subscription
    with pytest.raises(TransitionRefused):
        resume_as_scheduled(done, utc(2024, 2, 2))
    canceled = replace(early, status=S.CANCELED)
    assert not resume_is_due(canceled, utc(2024, 2, 2))
    with pytest.raises(TransitionRefused):
        resume_as_scheduled(canceled, utc(2024, 2, 2))


def test_pause_then_resume_round_trip():
    s = sub_in(S.ACTIVE)
    r = resume(pause(s, utc(2024, 1, 20), None).subscription, utc(2024, 1, 21)).subscription
    assert r == s


@pytest.mark.parametrize("status", [S.ACTIVE, S.TRIALING])
def test_resume_unschedules_a_cancel_at_period_end(status):
    s = sub_in(status, cancel_at_period_end=True)
    ch = resume(s, utc(2024, 1, 25))
    assert ch.event == "subscription.cancel_unscheduled"
    assert ch.subscription == replace(s, cancel_at_period_end=False)


@pytest.mark.parametrize("status", [S.PENDING, S.TRIALING, S.ACTIVE, S.CANCELED])
def test_resume_refused_without_pause_or_scheduled_cancel(status):
    with pytest.raises(TransitionRefused) as e:
        resume(sub_in(status), utc(2024, 1, 25))
    assert e.value.current_state is status and e.value.action is Action.RESUME
    assert f"'{status.value}'" in str(e.value)


# ============================================================================ cancel


@pytest.mark.parametrize("status", [S.TRIALING, S.ACTIVE, S.PAUSED])
def test_cancel_immediately(status):
    now = utc(2024, 1, 25, 16)
    s = sub_in(status, cancel_at_period_end=True, pending_plan_id=PLAN_B, pending_change_at=utc(2024, 2, 15, 10))
    ch = cancel(s, now, CancelMode.IMMEDIATELY)
    c = ch.subscription
    assert ch.event == "subscription.canceled"
    assert c.status is S.CANCELED and c.canceled_at == now
    assert c.cancel_at_period_end is False
    assert c.pending_plan_id is None and c.pending_change_at is None


@pytest.mark.parametrize("status", [S.TRIALING, S.ACTIVE, S.PAUSED])
def test_cancel_at_period_end_schedules(status):
    s = sub_in(status)
    ch = cancel(s, utc(2024, 1, 25), CancelMode.AT_PERIOD_END)
    assert ch.event == "subscription.cancel_scheduled"
    assert ch.subscription == replace(s, cancel_at_period_end=True)  # status unchanged, nothing else
    assert ch.details == {"effective_at": s.current_period_end.isoformat()}


def test_cancel_at_period_end_details_examples():
    assert cancel(sub_in(S.ACTIVE), utc(2024, 1, 25), CancelMode.AT_PERIOD_END).details == {
        "effective_at": "2024-02-15T10:00:00+00:00"}
    assert cancel(sub_in(S.TRIALING), utc(2024, 1, 25), CancelMode.AT_PERIOD_END).details == {
        "effective_at": "2024-01-29T10:00:00+00:00"}  # the trial's end


def test_cancel_at_period_end_twice_is_a_no_op():
    once = cancel(sub_in(S.ACTIVE), utc(2024, 1, 25), CancelMode.AT_PERIOD_END).subscription
    twice = cancel(once, utc(2024, 1, 26), CancelMode.AT_PERIOD_END)
    assert twice.event == ""
    assert twice.subscription == once


def test_cancel_immediately_after_scheduling():
    once = cancel(sub_in(S.ACTIVE), utc(2024, 1, 25), CancelMode.AT_PERIOD_END).subscription
    c = cancel(once, utc(2024, 1, 26), CancelMode.IMMEDIATELY).subscription
    assert c.status is S.CANCELED and c.canceled_at == utc(2024, 1, 26) and not c.cancel_at_period_end


@pytest.mark.parametrize("mode", list(CancelMode))
@pytest.mark.parametrize("status", [S.PENDING, S.CANCELED])
def test_cancel_refused_for_pending_and_canceled(status, mode):
    with pytest.raises(TransitionRefused) as e:
        cancel(sub_in(status), utc(2024, 1, 25), mode)
    assert e.value.current_state is status and e.value.action is Action.CANCEL
    assert str(e.value) == f"cannot cancel a subscription in state '{status.value}'"


# ======================================================================= change_plan

CHEAP = make_plan(fee="5.00", code="cheap")  # $5 / month
PRICEY = make_plan(fee="20.00", code="pricey")  # $20 / month
SAME_RATE = make_plan(fee="10.00", code="same")  # $10 / month
YEARLY_100 = make_plan("year", fee="100.00", code="y100")  # 100/31,556,952 < 10/2,629,746: a downgrade
YEARLY_200 = make_plan("year", fee="200.00", code="y200")  # 200/31,556,952 > 10/2,629,746: an upgrade
WEEKLY_3 = make_plan("week", fee="3.00", code="w3")  # 3/604,800 > 10/2,629,746: an upgrade
QUARTERLY = make_plan("month", 3, fee="60.00", code="q")  # $20/month equivalent: an upgrade
EURO = make_plan(fee="50.00", currency="EUR", code="eur")
NOW = utc(2024, 1, 25, 8, 30)


def test_upgrade_comparisons_used_below():
    assert is_upgrade(MONTHLY, PRICEY) and not is_upgrade(MONTHLY, CHEAP)
    assert not is_upgrade(MONTHLY, SAME_RATE)
    assert not is_upgrade(MONTHLY, YEARLY_100) and is_upgrade(MONTHLY, YEARLY_200)
    assert is_upgrade(MONTHLY, WEEKLY_3) and is_upgrade(MONTHLY, QUARTERLY)


def test_upgrade_defaults_to_immediate_and_keeps_the_period():
    s = sub_in(S.ACTIVE)
    ch = change_plan(s, MONTHLY, PLAN_B, PRICEY, True, ChangeTiming.DEFAULT, NOW)
    c = ch.subscription
    assert ch.event == "subscription.plan_changed"
    assert ch.details == {"from_plan_id": str(PLAN_A), "to_plan_id": str(PLAN_B), "direction": "upgrade",
                          "effective_at": NOW.isoformat()}
    assert c == replace(s, plan_id=PLAN_B)  # same interval: period and anchor kept


def test_downgrade_defaults_to_period_end():
    s = sub_in(S.ACTIVE)
    ch = change_plan(s, MONTHLY, PLAN_B, CHEAP, True, ChangeTiming.DEFAULT, NOW)
    c = ch.subscription
    assert ch.event == "subscription.plan_change_scheduled"
    assert c.plan_id == PLAN_A
    assert c.pending_plan_id == PLAN_B
    assert c.pending_change_at == s.current_period_end == utc(2024, 2, 15, 10)
    assert ch.details == {"from_plan_id": str(PLAN_A), "to_plan_id": str(PLAN_B), "direction": "downgrade",
                          "effective_at": "2024-02-15T10:00:00+00:00"}
    assert c == replace(s, pending_plan_id=PLAN_B, pending_change_at=utc(2024, 2, 15, 10))


def test_equal_rate_counts_as_downgrade_and_waits():
    ch = change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, SAME_RATE, True, ChangeTiming.DEFAULT, NOW)
    assert ch.event == "subscription.plan_change_scheduled"
    assert ch.details["direction"] == "downgrade"


def test_explicit_timing_overrides_the_default():
    s = sub_in(S.ACTIVE)
    down_now = change_plan(s, MONTHLY, PLAN_B, CHEAP, True, ChangeTiming.IMMEDIATELY, NOW)
    assert down_now.event == "subscription.plan_changed"
    assert down_now.subscription == replace(s, plan_id=PLAN_B)
    assert down_now.details["direction"] == "downgrade"
    up_later = change_plan(s, MONTHLY, PLAN_B, PRICEY, True, ChangeTiming.AT_PERIOD_END, NOW)
    assert up_later.event == "subscription.plan_change_scheduled"
    assert up_later.subscription == replace(s, pending_plan_id=PLAN_B, pending_change_at=utc(2024, 2, 15, 10))
    assert up_later.details["direction"] == "upgrade"


def test_second_scheduled_change_replaces_the_first():
    s1 = change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, CHEAP, True, ChangeTiming.DEFAULT, NOW).subscription
    cheaper = make_plan(fee="1.00", code="cheaper")
    ch = change_plan(s1, MONTHLY, PLAN_C, cheaper, True, ChangeTiming.DEFAULT, NOW + timedelta(days=1))
    assert ch.event == "subscription.plan_change_scheduled"
    assert ch.subscription.pending_plan_id == PLAN_C
    assert ch.subscription.pending_change_at == utc(2024, 2, 15, 10)
    assert ch.subscription.plan_id == PLAN_A


def test_immediate_change_clears_a_scheduled_one():
    s1 = change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, CHEAP, True, ChangeTiming.DEFAULT, NOW).subscription
    c = change_plan(s1, MONTHLY, PLAN_C, PRICEY, True, ChangeTiming.DEFAULT, NOW).subscription
    assert c.plan_id == PLAN_C and c.pending_plan_id is None and c.pending_change_at is None


def test_change_back_to_current_plan_withdraws_the_pending_change():
    s = sub_in(S.ACTIVE)
    s1 = change_plan(s, MONTHLY, PLAN_B, CHEAP, True, ChangeTiming.DEFAULT, NOW).subscription
    ch = change_plan(s1, CHEAP, PLAN_A, MONTHLY, True, ChangeTiming.DEFAULT, NOW)
    assert ch.event == "subscription.plan_change_withdrawn"
    assert ch.details == {"withdrawn_plan_id": str(PLAN_B)}
    assert ch.subscription == s


def test_withdraw_works_even_if_the_current_plan_is_archived():
    s1 = replace(sub_in(S.ACTIVE), pending_plan_id=PLAN_B, pending_change_at=utc(2024, 2, 15, 10))
    ch = change_plan(s1, MONTHLY, PLAN_A, MONTHLY, False, ChangeTiming.DEFAULT, NOW)
    assert ch.event == "subscription.plan_change_withdrawn"
    assert ch.subscription.pending_plan_id is None


@pytest.mark.parametrize("status", [S.PENDING, S.TRIALING, S.ACTIVE, S.PAUSED])
def test_change_to_current_plan_without_pending_change_fails(status):
    with pytest.raises(PreconditionFailed):
        change_plan(sub_in(status), MONTHLY, PLAN_A, MONTHLY, True, ChangeTiming.DEFAULT, NOW)


def test_change_to_other_currency_fails():
    with pytest.raises(PreconditionFailed, match="EUR"):
        change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, EURO, True, ChangeTiming.DEFAULT, NOW)


def test_change_to_archived_plan_fails():
    for timing in ChangeTiming:
        with pytest.raises(PreconditionFailed, match="archived"):
            change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, PRICEY, False, timing, NOW)


@pytest.mark.parametrize("new_plan_id", [PLAN_A, PLAN_B])
def test_change_plan_of_canceled_is_refused(new_plan_id):
    s = sub_in(S.CANCELED, pending_plan_id=PLAN_B)
    with pytest.raises(TransitionRefused) as e:
        change_plan(s, MONTHLY, new_plan_id, PRICEY, True, ChangeTiming.DEFAULT, NOW)
    assert e.value.current_state is S.CANCELED
    assert "canceled" in str(e.value)


def test_immediate_interval_change_starts_a_new_period_at_the_change():
    s = sub_in(S.ACTIVE)
    ch = change_plan(s, MONTHLY, PLAN_B, YEARLY_200, True, ChangeTiming.DEFAULT, NOW)  # an upgrade: now
    c = ch.subscription
    assert ch.event == "subscription.plan_changed"
    assert c.plan_id == PLAN_B
    assert c.billing_anchor == NOW
    assert (c.current_period_start, c.current_period_end) == (NOW, utc(2025, 1, 25, 8, 30))
    assert ch.details["new_period_start"] == NOW.isoformat()


def test_explicit_immediate_downgrade_to_yearly_starts_a_new_period():
    c = change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, YEARLY_100, True, ChangeTiming.IMMEDIATELY, NOW).subscription
    assert (c.billing_anchor, c.current_period_start, c.current_period_end) == (
        NOW, NOW, utc(2025, 1, 25, 8, 30))


def test_default_downgrade_to_yearly_waits_for_period_end():
    ch = change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, YEARLY_100, True, ChangeTiming.DEFAULT, NOW)
    assert ch.event == "subscription.plan_change_scheduled"
    assert ch.subscription.current_period_end == utc(2024, 2, 15, 10)  # period untouched


def test_interval_count_change_counts_as_a_different_interval():
    c = change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, QUARTERLY, True, ChangeTiming.DEFAULT, NOW).subscription
    assert (c.current_period_start, c.current_period_end) == (NOW, utc(2024, 4, 25, 8, 30))


def test_monthly_to_weekly_upgrade_starts_weekly_period():
    c = change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, WEEKLY_3, True, ChangeTiming.DEFAULT, NOW).subscription
    assert (c.billing_anchor, c.current_period_start, c.current_period_end) == (NOW, NOW, utc(2024, 2, 1, 8, 30))


def test_immediate_interval_change_on_paused_also_restarts_period():
    c = change_plan(sub_in(S.PAUSED), MONTHLY, PLAN_B, YEARLY_200, True, ChangeTiming.DEFAULT, NOW).subscription
    assert c.status is S.PAUSED
    assert (c.current_period_start, c.current_period_end) == (NOW, utc(2025, 1, 25, 8, 30))


def test_immediate_interval_change_while_trialing_keeps_the_trial_period():
    s = sub_in(S.TRIALING)
    ch = change_plan(s, MONTHLY, PLAN_B, YEARLY_200, True, ChangeTiming.DEFAULT, NOW)
    assert ch.subscription == replace(s, plan_id=PLAN_B)
    assert "new_period_start" not in ch.details


def test_downgrade_while_trialing_is_scheduled_at_trial_end():
    ch = change_plan(sub_in(S.TRIALING), MONTHLY, PLAN_B, CHEAP, True, ChangeTiming.DEFAULT, NOW)
    assert ch.event == "subscription.plan_change_scheduled"
    assert ch.subscription.pending_change_at == utc(2024, 1, 29, 10)


@pytest.mark.parametrize("timing", list(ChangeTiming))
@pytest.mark.parametrize("new_spec", [CHEAP, PRICEY, YEARLY_100, YEARLY_200])
def test_pending_subscription_swaps_immediately_whatever_the_direction(new_spec, timing):
    s = new().subscription
    ch = change_plan(s, MONTHLY, PLAN_B, new_spec, True, timing, NOW)
    assert ch.event == "subscription.plan_changed"
    assert ch.subscription == replace(s, plan_id=PLAN_B)  # no period yet, none made up
    assert ch.subscription.current_period_start is None and ch.subscription.billing_anchor is None


def test_pending_swap_then_activate_uses_the_new_plan_interval():
    s = change_plan(new().subscription, MONTHLY, PLAN_B, YEARLY_200, True, ChangeTiming.DEFAULT, NOW).subscription
    a = activate(s, YEARLY_200, JAN15).subscription
    assert (a.current_period_start, a.current_period_end) == (JAN15, utc(2025, 1, 15, 10))


def test_archived_is_reported_before_currency_mismatch():
    # archived AND other currency: archived is reported
    with pytest.raises(PreconditionFailed, match="archived"):
        change_plan(sub_in(S.ACTIVE), MONTHLY, PLAN_B, EURO, False, ChangeTiming.DEFAULT, NOW)


# ================================================================ property: activate

_UNITS = st.sampled_from([("month", 12), ("week", 4), ("day", 31)]).flatmap(
    lambda u: st.tuples(st.just(u[0]), st.integers(1, u[1])))
_STARTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit_count=_UNITS, start=_STARTS, anchor_fraction=st.none() | st.floats(0, 1), now_offset_days=st.integers(-366, 366))
def test_first_period_contains_start_and_is_at_most_one_interval(unit_count, start, anchor_fraction, now_offset_days):
    unit, count = unit_count
    plan = make_plan(unit, count)
    u = IntervalUnit(unit)
    one_later = add_interval(start, u, count)
    anchor = None
    if anchor_fraction is not None:
        span_us = (one_later - start) // US
        anchor = start + US * round(span_us * anchor_fraction)
        assert start <= anchor <= one_later
    now = start - timedelta(days=now_offset_days)  # start within +-366 days of now
    sub = create(subscription_id=SUB_ID, customer_id="c", plan_id=PLAN_A, plan=plan, now=now, start_at=start,
                 billing_anchor=anchor, trial_days=0, metadata={}).subscription
    a = activate(sub, plan, start).subscription
    ps, pe = a.current_period_start, a.current_period_end
    assert a.status is S.ACTIVE
    assert start == ps < pe
    assert pe - ps <= one_later - start
    # the end is a boundary of the anchor's grid: the next period starts exactly there
    assert period_containing(a.billing_anchor, u, count, pe)[0] == pe
    assert period_containing(a.billing_anchor, u, count, ps)[1] == pe
    if anchor is None or anchor == start:
        assert pe == one_later
    else:
        assert pe <= anchor


@settings(max_examples=200, deadline=None)
@given(unit_count=_UNITS, start=_STARTS, days=st.integers(1, MAX_TRIAL_DAYS))
def test_trial_period_is_exactly_trial_days(unit_count, start, days):
    unit, count = unit_count
    plan = make_plan(unit, count)
    sub = create(subscription_id=SUB_ID, customer_id="c", plan_id=PLAN_A, plan=plan, now=start, start_at=None,
                 billing_anchor=None, trial_days=days, metadata={}).subscription
    t = activate(sub, plan, start).subscription
    assert t.status is S.TRIALING
    assert (t.current_period_start, t.current_period_end) == (start, start + timedelta(days=days))
    assert t.trial_end == t.billing_anchor == start + timedelta(days=days)

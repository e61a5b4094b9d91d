"""Subscription rules: creation, activation, trials, pause, cancel and plan changes.

Pure functions over an immutable `Subscription`; each returns the new state and the
name of the event it amounts to (or raises). The service layer loads, locks, persists,
audits and announces; nothing here does I/O or reads a clock.

Periods: a subscription's periods are aligned to its billing anchor
(`periods.period_containing`). The first period runs from the start to the first anchor
boundary after it, so an anchor other than the start gives a shorter first period
(prorated by the billing issue). A trial is a period of its own, [start, trial_end), and
when no anchor was asked for, the anchor is the trial's end.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Mapping

from billing.domain.errors import PreconditionFailed, TransitionRefused, ValidationError, Violations
from billing.domain.lifecycle import Action, SubscriptionStatus, transition
from billing.domain.periods import add_interval, period_containing
from billing.domain.plans import PlanSpec, is_upgrade
from billing.domain.events import EventType
from billing.domain.zones import UTC_ZONE, check_zone

S = SubscriptionStatus

CUSTOMER_ID_MAX = 255
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
MAX_TRIAL_DAYS = 730
# How far a start may be back-dated or post-dated: one year either way.
START_WINDOW = timedelta(days=366)


class CancelMode(StrEnum):
    IMMEDIATELY = "immediately"
    AT_PERIOD_END = "at_period_end"


class ChangeTiming(StrEnum):
    DEFAULT = "default"  # upgrades now, downgrades at period end
    IMMEDIATELY = "immediately"
    AT_PERIOD_END = "at_period_end"


@dataclass(frozen=True)
class Subscription:
    id: uuid.UUID
    customer_id: str
    plan_id: uuid.UUID
    status: SubscriptionStatus
    created_at: datetime
    start_at: datetime
    billing_anchor: datetime | None  # None until activation when no anchor was asked for
    trial_days: int
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    paused_at: datetime | None = None
    pause_resumes_at: datetime | None = None
    pending_plan_id: uuid.UUID | None = None
    pending_change_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # What is left to charge of the current period's base fee at its close: None = the
    # default, a time = [that time, period end) (billing.domain.proration, docs/proration.md).
    period_fee_from: datetime | None = None
    # The IANA zone its periods are calendar periods of (docs/time.md); fixed at creation.
    time_zone: str = UTC_ZONE


@dataclass(frozen=True)
class Change:
    """The outcome of one action: the new state and the event type announcing it."""

    subscription: Subscription
    event: str
    details: Mapping[str, str] = field(default_factory=dict)


def _check_customer_id(customer_id: str) -> str:
    if not customer_id or not customer_id.strip():
        raise ValidationError("customer_id", "is required")
    if len(customer_id) > CUSTOMER_ID_MAX or not customer_id.isprintable():
        raise ValidationError("customer_id", f"must be 1..{CUSTOMER_ID_MAX} printable characters")
    return customer_id


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if len(metadata) > METADATA_MAX_KEYS:
        raise ValidationError("metadata", f"must have at most {METADATA_MAX_KEYS} keys")
    for key, value in metadata.items():
        if not key or len(key) > METADATA_KEY_MAX or not key.isprintable():
            raise ValidationError(f"metadata[{key[:40]!r}]", f"keys must be 1..{METADATA_KEY_MAX} printable characters")
        if len(value) > METADATA_VALUE_MAX or "\x00" in value:
            raise ValidationError(f"metadata[{key!r}]",
                                  f"values must be at most {METADATA_VALUE_MAX} characters, without NUL")
    return dict(metadata)


def _check_start(start_at: datetime | None, now: datetime, window: timedelta | None) -> None:
    if start_at is not None and window is not None and not now - window <= start_at <= now + window:
        raise ValidationError("start_at", "must be within a year of now")


def _check_trial_days(days: int | None) -> None:
    if days is not None and not 0 <= days <= MAX_TRIAL_DAYS:
        raise ValidationError("trial_days", f"must be 0..{MAX_TRIAL_DAYS}")


def _check_time_zone(name: str) -> str:
    try:
        return check_zone(name)
    except ValueError as exc:
        raise ValidationError("time_zone", str(exc)) from None


def check_create(v: Violations, *, customer_id: str, now: datetime, start_at: datetime | None,
                 trial_days: int | None, metadata: Mapping[str, str], time_zone: str = UTC_ZONE,
                 start_window: timedelta | None = START_WINDOW) -> None:
    """The checks of a new subscription that need no plan, each violation into `v`.
    `start_window`: how far from `now` the start may be (None: anywhere, a test clock's
    subscription, whose time line the tester moves at will)."""
    v.check(_check_customer_id, customer_id)
    v.check(_check_time_zone, time_zone)
    v.check(_check_start, start_at, now, start_window)
    v.check(_check_trial_days, trial_days)
    v.check(_check_metadata, metadata)


def create(*, subscription_id: uuid.UUID, customer_id: str, plan_id: uuid.UUID, plan: PlanSpec, now: datetime,
           start_at: datetime | None, billing_anchor: datetime | None, trial_days: int | None,
           metadata: Mapping[str, str], time_zone: str = UTC_ZONE,
           start_window: timedelta | None = START_WINDOW) -> Change:
    """A new pending subscription. `activate` may follow in the same transaction. Refuses
    with one ValidationError carrying every violation."""
    v = Violations()
    check_create(v, customer_id=customer_id, now=now, start_at=start_at, trial_days=trial_days, metadata={},
                 time_zone=time_zone, start_window=start_window)
    zone = v.check(_check_time_zone, time_zone) or UTC_ZONE
    start = start_at or now
    days = plan.trial_days if trial_days is None else trial_days
    if billing_anchor is not None and 0 <= days <= MAX_TRIAL_DAYS:
        first_paid = start + timedelta(days=days)
        # The window is a sanity check on the instant; in a zone only the anchor's local date counts.
        latest = add_interval(first_paid, plan.interval, plan.interval_count)
        if not first_paid <= billing_anchor <= latest:
            v.items.append((
                "billing_anchor", "must fall between the end of the trial (or the start) and one billing period later"
            ))
    v.check(_check_metadata, metadata)
    v.raise_if_any()
    sub = Subscription(
        id=subscription_id, customer_id=customer_id, plan_id=plan_id, status=S.PENDING, created_at=now,
        start_at=start, billing_anchor=billing_anchor, trial_days=days, metadata=dict(metadata),
        time_zone=zone,
    )
    return Change(sub, EventType.CREATED)


def _first_period(anchor: datetime, plan: PlanSpec, start: datetime, zone: str) -> tuple[datetime, datetime]:
    return start, period_containing(anchor, plan.interval, plan.interval_count, start, zone=zone)[1]


def activate(sub: Subscription, plan: PlanSpec, at: datetime) -> Change:
    """pending -> trialing (the plan or the override gives trial days) or active;
    trialing -> active (ends the trial at `at`, and the paid periods start there)."""
    if sub.status is S.TRIALING:
        transition(sub.status, Action.ACTIVATE)
        start, end = at, add_interval(at, plan.interval, plan.interval_count, zone=sub.time_zone)
        new = replace(sub, status=S.ACTIVE, trial_end=at, billing_anchor=at, current_period_start=start,
                      current_period_end=end)
        return Change(new, EventType.TRIAL_ENDED, {"ended_early": "true"})
    if sub.status is S.PENDING and sub.trial_days > 0:
        transition(sub.status, Action.START_TRIAL)
        trial_end = at + timedelta(days=sub.trial_days)
        new = replace(sub, status=S.TRIALING, start_at=at, trial_end=trial_end,
                      billing_anchor=sub.billing_anchor or trial_end, current_period_start=at,
                      current_period_end=trial_end)
        return Change(new, EventType.TRIAL_STARTED)
    transition(sub.status, Action.ACTIVATE)
    anchor = sub.billing_anchor or at
    start, end = _first_period(anchor, plan, at, sub.time_zone)
    new = replace(sub, status=S.ACTIVE, start_at=at, billing_anchor=anchor, current_period_start=start,
                  current_period_end=end)
    return Change(new, EventType.ACTIVATED)


def pause(sub: Subscription, now: datetime, resumes_at: datetime | None) -> Change:
    status = transition(sub.status, Action.PAUSE)
    if resumes_at is not None and resumes_at <= now:
        raise ValidationError("resumes_at", "must be in the future")
    details = {"resumes_at": resumes_at.isoformat()} if resumes_at else {}
    return Change(replace(sub, status=status, paused_at=now, pause_resumes_at=resumes_at),
                  EventType.PAUSED, details)


def resume(sub: Subscription, now: datetime) -> Change:
    """paused -> active; or, on a subscription with a cancel pending at period end, undo it."""
    if sub.status in (S.ACTIVE, S.TRIALING) and sub.cancel_at_period_end:
        return Change(replace(sub, cancel_at_period_end=False), EventType.CANCEL_UNSCHEDULED)
    status = transition(sub.status, Action.RESUME)
    return Change(replace(sub, status=status, paused_at=None, pause_resumes_at=None), EventType.RESUMED,
                  {"paused_at": sub.paused_at.isoformat() if sub.paused_at else ""})


def resume_is_due(sub: Subscription, now: datetime) -> bool:
    """A paused subscription whose scheduled resume (``pause_resumes_at``) has come."""
    return sub.status is S.PAUSED and sub.pause_resumes_at is not None and sub.pause_resumes_at <= now


def resume_as_scheduled(sub: Subscription, now: datetime) -> Change:
    """The automatic resume of a pause with ``resumes_at``: the same transition as
    ``resume``, taking effect AT ``pause_resumes_at`` (not at ``now``, when the job that
    carries it out happens to run: a late job gives no free paused time). Refused unless
    due (``resume_is_due``), so carrying it out twice changes nothing the second time."""
    if not resume_is_due(sub, now):
        if sub.status is not S.PAUSED:
            transition(sub.status, Action.RESUME)  # raises TransitionRefused naming the state
        raise PreconditionFailed(
            f"subscription {sub.id} has no scheduled resume due by {now.isoformat()}")
    at = sub.pause_resumes_at
    assert at is not None  # resume_is_due
    change = resume(sub, at)
    return Change(change.subscription, change.event,
                  {**change.details, "resumed_at": at.isoformat(), "trigger": "scheduled"})


def cancel(sub: Subscription, now: datetime, mode: CancelMode) -> Change:
    status = transition(sub.status, Action.CANCEL)  # refuses pending and canceled alike
    if mode is CancelMode.AT_PERIOD_END:
        if sub.cancel_at_period_end:
            return Change(sub, "")  # already scheduled: nothing changes
        return Change(replace(sub, cancel_at_period_end=True), EventType.CANCEL_SCHEDULED,
                      {"effective_at": sub.current_period_end.isoformat() if sub.current_period_end else ""})
    return Change(replace(sub, status=status, canceled_at=now, cancel_at_period_end=False, pending_plan_id=None,
                          pending_change_at=None), EventType.CANCELED)


def change_plan(sub: Subscription, current: PlanSpec, new_plan_id: uuid.UUID, new: PlanSpec, new_plan_active: bool,
                timing: ChangeTiming, now: datetime) -> Change:
    """Change to another active plan of the same currency, now or at period end.

    By default an upgrade (higher base fee per second) applies now and a downgrade at
    period end. A change back to the current plan withdraws a pending change. When the
    billing intervals differ, an immediate change starts a new period at the change.
    """
    if sub.status is S.CANCELED:
        raise TransitionRefused(sub.status, "change_plan", "cannot change the plan of a subscription in state 'canceled'")
    if new_plan_id == sub.plan_id:
        if sub.pending_plan_id is None:
            raise PreconditionFailed("the subscription is already on this plan and has no pending change to withdraw",
                                     "SAME_PLAN")
        return Change(replace(sub, pending_plan_id=None, pending_change_at=None), EventType.PLAN_CHANGE_WITHDRAWN,
                      {"withdrawn_plan_id": str(sub.pending_plan_id)})
    if not new_plan_active:
        raise PreconditionFailed("the new plan is archived and takes no new subscriptions", "PLAN_ARCHIVED")
    if new.currency != current.currency:
        raise PreconditionFailed(f"the new plan is in {new.currency}, the subscription in {current.currency}",
                                 "CURRENCY_MISMATCH")
    upgrade = is_upgrade(current, new)
    immediate = timing is ChangeTiming.IMMEDIATELY or (timing is ChangeTiming.DEFAULT and upgrade)
    if sub.status is S.PENDING or sub.current_period_end is None:
        immediate = True  # nothing has started: no period end to wait for
    details = {"from_plan_id": str(sub.plan_id), "to_plan_id": str(new_plan_id),
               "direction": "upgrade" if upgrade else "downgrade"}
    if not immediate:
        assert sub.current_period_end is not None
        return Change(replace(sub, pending_plan_id=new_plan_id, pending_change_at=sub.current_period_end),
                      EventType.PLAN_CHANGE_SCHEDULED, {**details, "effective_at": sub.current_period_end.isoformat()})
    new_sub = replace(sub, plan_id=new_plan_id, pending_plan_id=None, pending_change_at=None)
    same_interval = (new.interval, new.interval_count) == (current.interval, current.interval_count)
    if not same_interval and sub.status in (S.ACTIVE, S.PAUSED):
        new_sub = replace(new_sub, billing_anchor=now, current_period_start=now,
                          current_period_end=add_interval(now, new.interval, new.interval_count,
                                                                         zone=sub.time_zone))
        details["new_period_start"] = now.isoformat()
    return Change(new_sub, EventType.PLAN_CHANGED, {**details, "effective_at": now.isoformat()})

"""Which billing period a usage event belongs to, and when a subscription takes no usage.

Pure, on integer microseconds since the epoch: ingestion handles events by the million,
and converting each to a datetime would cost more than storing it. The ingest path
(billing/services/usage.py) reads `UsageSubscription`s and asks them about each event.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from billing.domain.periods import from_us, period_containing, to_us
from billing.domain.plans import PlanSpec

__all__ = ["EventChecks", "UsageSubscription", "event_checks", "period_at", "refusal"]


@dataclass(frozen=True, slots=True)
class EventChecks:
    """What a plan's charges ask of an event beyond a non-negative quantity: the metrics
    that take negative quantities (corrections, weighted_sum) and, per dynamic metric, the
    property that must hold the event's price."""

    negative_ok: frozenset[str]
    amount_property: dict[str, str]


def event_checks(spec: PlanSpec) -> EventChecks:
    return EventChecks(frozenset(c.metric_code for c in spec.usage_charges if c.takes_negative),
                       {c.metric_code: c.amount_property for c in spec.usage_charges if c.amount_property})


@dataclass(slots=True)
class UsageSubscription:
    """What ingestion needs of a subscription, times in microseconds."""

    plan_id: uuid.UUID
    status: str
    start_us: int
    anchor: datetime | None
    period_start_us: int | None  # None: not started (no period yet)
    period_end_us: int | None
    canceled_us: int | None
    paused_us: int | None = None  # paused since (also kept by a subscription canceled while paused)
    pauses: tuple[tuple[int, int], ...] = ()  # past pauses [from, to)
    resumes_us: int | None = None  # the current pause's scheduled end (pause_resumes_at)
    zone: str = "UTC"  # the IANA zone its periods are calendar periods of (domain/zones.py)

    def paused(self, t: int) -> bool:
        """Whether the subscription was paused at ``t`` (usage then is not billed). A pause
        with a scheduled resume ends at it, even before the scheduler has carried it out."""
        if self.paused_us is not None and t >= self.paused_us and (self.resumes_us is None or t < self.resumes_us):
            return True
        return any(a <= t < b for a, b in self.pauses)

    def attribute(self, spec: PlanSpec, t: int) -> tuple[int, int, bool]:
        """(period start, period end, late) of an event at ``t`` that `refusal` let through.

        Before the current period, the period is closed and billed, so the event is late;
        after it (the period ended but was not billed yet), it belongs to a later period.
        Usage of a canceled subscription is always late: its last period was billed (by the
        last close or an immediate cancel's final request) and it bills no period again, so
        a run bills it as late usage (docs/billing.md).
        """
        assert self.period_start_us is not None and self.period_end_us is not None
        if self.period_start_us <= t < self.period_end_us:  # the common case
            start, end, late = self.period_start_us, self.period_end_us, False
        else:
            anchor = self.anchor or from_us(self.start_us)
            s, e = period_containing(anchor, spec.interval, spec.interval_count, from_us(t), zone=self.zone)
            start_us, end_us = to_us(s), to_us(e)
            if t < self.period_start_us:
                # Never reach into the current period, nor before the subscription's start.
                start, end, late = max(start_us, self.start_us), min(end_us, self.period_start_us), True
            else:
                start, end, late = max(start_us, self.period_end_us), end_us, False
        return start, end, late or self.canceled_us is not None


def refusal(sub: UsageSubscription, t: int) -> str | None:
    """Why the subscription takes no usage at ``t`` (a rejection reason), or None."""
    if sub.period_start_us is None:
        return "subscription_not_started"
    if sub.canceled_us is not None and t >= sub.canceled_us:
        return "subscription_canceled"
    if (sub.paused_us is not None or sub.pauses) and sub.paused(t):
        return "subscription_paused"
    return None


def period_at(sub: UsageSubscription, spec: PlanSpec, t: int) -> tuple[int, int] | None:
    """The period of the subscription that starts exactly at ``t`` ([start, end) in
    microseconds), as `attribute` draws periods, or None when no period starts there: before
    the subscription started, inside a period, or while it has no period at all."""
    if sub.period_start_us is None or t < sub.start_us:
        return None
    start, end, _ = sub.attribute(spec, t)
    return (start, end) if start == t else None

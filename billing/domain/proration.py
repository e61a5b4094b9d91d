"""Proration: what a change in the middle of a period costs, to the second and to the minor unit.

Pure: no I/O, no clock, no float. The rules are in ``docs/proration.md``; in short:

The rule
--------
A period ``[start, end)`` of a plan is worth its base fee. A piece ``[a, b)`` of it is worth
``fee * share`` with ``share = seconds(b - a) / seconds(end - start)``, an exact
``Fraction``. Each line is rounded once, half-even to the currency's minor unit
(``money.round_money``); the exact product is never rounded on the way.

Seconds: an instant counts from the whole second it falls in, measured from the start of
the period: ``elapsed(t) = floor((t - start) / 1 s)``. So a change at 12:00:00.999 is a
change at 12:00:00 (the customer keeps the started second), and the pieces of a period
always add up to exactly the period. A short first period (a billing anchor other than the
start) is a piece of its NOMINAL period (the anchor-aligned period around it), so it costs
``fee * seconds(first period) / seconds(nominal period)``.

The base-fee state of the current period
----------------------------------------
``Subscription.period_fee_from`` says what is left to charge of the current period's base
fee when the period closes:

* ``None``: the defaults of ``invoicing.close_period``: an in-arrears plan charges the whole
  period at its close; an in-advance plan was charged in advance by the run that opened the
  period (``charged_in_advance``), or, when no run opened it, charges it at its close.
* a time ``x``: everything before ``x`` is settled (charged, credited or not chargeable),
  and ``[x, end)`` is charged at the close at the plan then in effect. ``x == end``:
  nothing is left, and unless the subscription is paused the rest of the period counts as
  paid at the current plan's price (a later change credits it).

Each event below settles the current period up to its time and returns the lines (for
``pending_lines`` or an invoice request of their own) and the new subscription state.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import minor_units, round_money
from billing.domain.periods import period_containing
from billing.domain.plans import BillingTiming, PlanSpec
from billing.domain.pricing import Line, base_fee_line
from billing.domain.subscriptions import Subscription

__all__ = [
    "CREDIT", "CHARGE", "Behavior", "Settled", "FeeState", "Proration",
    "elapsed", "floor_to_second", "share", "prorated_amount", "nominal_period", "fee_piece",
    "credit_line", "charge_line", "fee_state", "on_change", "on_cancel", "on_pause", "on_resume",
    "resumed_late_lines",
]

S = SubscriptionStatus
CREDIT = "proration_credit"
CHARGE = "proration_charge"
SECOND = timedelta(seconds=1)


class Behavior(StrEnum):
    """How proration lines are billed (the API's ProrationBehavior)."""

    NEXT_INVOICE = "next_invoice"  # into pending_lines: the subscription's next invoice request
    INVOICE_NOW = "invoice_now"  # an invoice request of their own, now
    NONE = "none"  # no proration

    @classmethod
    def parse(cls, value: str) -> "Behavior":
        return cls(value or cls.NEXT_INVOICE.value)


# ----------------------------------------------------------------------- arithmetic


def elapsed(start: datetime, t: datetime) -> int:
    """Whole seconds from ``start`` to ``t``, rounded down (exact: timedelta floor division)."""
    return (t - start) // SECOND


def floor_to_second(nominal: tuple[datetime, datetime], t: datetime) -> datetime:
    """``t`` moved back to the start of the second it falls in, counted from the nominal
    period's start, and kept inside the nominal period."""
    start, end = nominal
    if t <= start:
        return start
    if t >= end:
        return end
    return start + elapsed(start, t) * SECOND


def share(nominal: tuple[datetime, datetime], a: datetime, b: datetime) -> Fraction:
    """The exact share of the nominal period that the piece ``[a, b)`` covers."""
    start, end = nominal
    length = elapsed(start, end)
    if length <= 0:
        raise ValueError(f"empty period [{start.isoformat()}, {end.isoformat()})")
    if not start <= a <= b <= end:
        raise ValueError(f"[{a.isoformat()}, {b.isoformat()}) is not inside [{start.isoformat()}, {end.isoformat()})")
    return Fraction(elapsed(start, b) - elapsed(start, a), length)


def prorated_amount(price: Decimal, fraction: Fraction, currency: str) -> Decimal:
    """``price * fraction`` rounded ONCE by the one rule (``money.round_money``).

    The exact product is a rational; it is handed to ``round_money`` as a decimal that rounds
    exactly like it: the digits down to three places below the minor unit, plus a final 1
    when anything is left over (a "sticky" digit). A rational that is not a finite decimal
    is never exactly half-way, and the sticky digit keeps it off the half-way point on the
    correct side, so half-even rounding of the decimal equals half-even rounding of the
    exact value.
    """
    if not isinstance(price, Decimal) or not price.is_finite():
        raise TypeError(f"price must be a finite Decimal, got {price!r}")
    if not isinstance(fraction, Fraction):
        raise TypeError(f"fraction must be a Fraction, got {type(fraction).__name__}")
    exact = Fraction(price) * fraction
    places = minor_units(currency) + 3
    scaled = abs(exact) * 10**places
    digits = scaled.numerator // scaled.denominator
    if digits * scaled.denominator != scaled.numerator:
        digits, places = digits * 10 + 1, places + 1
    value = Decimal(-digits if exact < 0 else digits).scaleb(-places)
    return round_money(value, currency)


# ----------------------------------------------------------------------- periods and lines


def nominal_period(sub: Subscription, plan: PlanSpec, start: datetime | None = None,
                   end: datetime | None = None) -> tuple[datetime, datetime]:
    """The full anchor-aligned period of ``plan`` around ``[start, end)`` (default: the
    current period). A regular period is its own nominal period; a short first period
    (anchor other than the start) is a part of the period that ends where it ends."""
    start = start or sub.current_period_start
    end = end or sub.current_period_end
    if start is None or end is None:
        raise ValueError(f"subscription {sub.id} has no current period")
    if sub.billing_anchor is None:
        return start, end
    ps, pe = period_containing(sub.billing_anchor, plan.interval, plan.interval_count, start, zone=sub.time_zone)
    if pe != end or ps > start:  # not a part of an anchor-aligned period: it is a period of its own
        return start, end
    return ps, pe


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _f(fraction: Fraction) -> str:
    return f"{fraction.numerator}/{fraction.denominator}"


def fee_piece(plan: PlanSpec, a: datetime, b: datetime, nominal: tuple[datetime, datetime], *,
              kind: str = "base_fee", sign: int = 1, what: str = "") -> Line | None:
    """A line for the base fee of ``plan`` over ``[a, b)`` of ``nominal``; None when the piece
    is empty (no whole second). A whole base_fee period is ``pricing.base_fee_line``."""
    fraction = share(nominal, a, b)
    if fraction == 0:
        return None
    if kind == "base_fee" and fraction == 1 and (a, b) == nominal:
        return base_fee_line(plan, a, b)
    amount = prorated_amount(plan.base_fee, fraction, plan.currency)
    if sign < 0:
        amount = -amount if amount else amount
    label = what or "base fee"
    description = (f"{plan.name} ({plan.code}) {label} {_when(a)} - {_when(b)}, "
                   f"{_f(fraction)} of the period")
    return Line(kind=kind, description=description, metric_code=None, quantity=Decimal(1),
                unit_price=plan.base_fee, amount=amount, period_start=a, period_end=b, fraction=fraction)


def credit_line(plan: PlanSpec, a: datetime, b: datetime, nominal: tuple[datetime, datetime]) -> Line | None:
    """Credit for unused time ``[a, b)`` of a fee charged in advance (negative amount)."""
    return fee_piece(plan, a, b, nominal, kind=CREDIT, sign=-1, what="unused time")


def charge_line(plan: PlanSpec, a: datetime, b: datetime, nominal: tuple[datetime, datetime], *,
                used: bool = False) -> Line | None:
    """Charge for ``[a, b)``: remaining time of a new plan, or (``used``) time used already."""
    return fee_piece(plan, a, b, nominal, kind=CHARGE, what="used time" if used else "remaining time")


# ----------------------------------------------------------------------- the state of the period


class Settled(StrEnum):
    PREPAID = "prepaid"  # [.., end) was charged in advance at the current plan
    POSTPAID = "postpaid"  # [since, end) is charged at the close
    NOTHING = "nothing"  # paused, trialing, not started: nothing charged, nothing to charge


@dataclass(frozen=True)
class FeeState:
    settled: Settled
    since: datetime | None = None  # POSTPAID: the start of what the close charges


def fee_state(sub: Subscription, plan: PlanSpec, charged_in_advance: bool) -> FeeState:
    """Where the current period's base fee stands (see the module docstring).

    ``charged_in_advance``: a billing run opened the current period (for in-advance plans
    it then charged the period's fee unless the subscription was paused at that time).
    """
    start, end = sub.current_period_start, sub.current_period_end
    if sub.status not in (S.ACTIVE, S.PAUSED) or start is None or end is None:
        return FeeState(Settled.NOTHING)
    if sub.status is S.PAUSED:
        return FeeState(Settled.NOTHING)
    if sub.period_fee_from is not None:
        if sub.period_fee_from >= end:
            return FeeState(Settled.PREPAID)
        return FeeState(Settled.POSTPAID, max(sub.period_fee_from, start))
    if plan.billing_timing is BillingTiming.IN_ADVANCE and charged_in_advance:
        return FeeState(Settled.PREPAID)
    return FeeState(Settled.POSTPAID, start)


@dataclass(frozen=True)
class Proration:
    """What an event costs: the lines to bill and the subscription after it."""

    lines: tuple[Line, ...]
    subscription: Subscription


def _keep(*lines: Line | None) -> list[Line]:
    return [ln for ln in lines if ln is not None]


def _settle_old(before: Subscription, plan: PlanSpec, state: FeeState, at: datetime,
                nominal: tuple[datetime, datetime]) -> list[Line]:
    """Close the old plan's account at ``at``: credit unused prepaid time, charge used postpaid time."""
    end = before.current_period_end
    assert end is not None  # the callers return early for a subscription without a period
    if state.settled is Settled.PREPAID:
        return _keep(credit_line(plan, at, end, nominal))
    if state.settled is Settled.POSTPAID:
        assert state.since is not None  # POSTPAID always names it (fee_state)
        if state.since < at:
            return _keep(charge_line(plan, state.since, at, nominal, used=True))
    return []


def on_change(before: Subscription, old: PlanSpec, after: Subscription, new: PlanSpec, at: datetime, *,
              charged_in_advance: bool, behavior: Behavior) -> Proration:
    """An immediate plan change at ``at`` (``after`` is ``subscriptions.change_plan``'s result).

    * the old plan: unused prepaid time is credited (``[t, end)``), used postpaid time is
      charged (``[since, t)``);
    * the new plan, same interval: an in-advance plan is charged for ``[t, end)`` now; an
      in-arrears plan's ``[t, end)`` is charged at the close (``period_fee_from = t``);
    * the new plan, another interval (a new period starts at ``t``): an in-advance plan's
      first period is charged now; an in-arrears one at its close;
    * ``Behavior.NONE``: no lines; the rest of the period is billed as if the new plan had
      applied all along (paid in advance: it stays paid; in arrears: the close bills the
      period's open part at the new price). A cut-short in-arrears period is not billed.
    A paused subscription changes plan without lines: nothing is charged while paused.
    """
    if before.status not in (S.ACTIVE, S.PAUSED) or before.current_period_end is None:
        return Proration((), after)  # pending or trialing: nothing is billed yet
    assert before.current_period_start is not None and after.current_period_start is not None
    nominal = nominal_period(before, old)
    t = floor_to_second(nominal, max(at, before.current_period_start))
    end = before.current_period_end
    state = fee_state(before, old, charged_in_advance)
    new_period = after.current_period_start != before.current_period_start
    if before.status is S.PAUSED:
        if new_period:  # the new period starts paused: nothing to charge unless resumed
            return Proration((), replace(after, period_fee_from=after.current_period_end))
        return Proration((), after)
    if behavior is Behavior.NONE:
        if new_period:
            return Proration((), replace(after, period_fee_from=None))
        if state.settled is Settled.PREPAID:
            return Proration((), replace(after, period_fee_from=end))
        return Proration((), replace(after, period_fee_from=state.since))
    lines = _settle_old(before, old, state, t, nominal)
    if new_period:
        # [t, t + interval): the new plan's first period, anchored at the change
        if new.billing_timing is BillingTiming.IN_ADVANCE:
            a, b = after.current_period_start, after.current_period_end
            assert b is not None
            lines += _keep(charge_line(new, a, b, (a, b)))
            return Proration(tuple(lines), replace(after, period_fee_from=b))
        return Proration(tuple(lines), replace(after, period_fee_from=None))
    if new.billing_timing is BillingTiming.IN_ADVANCE:
        lines += _keep(charge_line(new, t, end, nominal))
        return Proration(tuple(lines), replace(after, period_fee_from=end))
    return Proration(tuple(lines), replace(after, period_fee_from=t))


def on_cancel(before: Subscription, plan: PlanSpec, after: Subscription, at: datetime, *,
              charged_in_advance: bool, behavior: Behavior) -> Proration:
    """An immediate cancel at ``at``: the final lines of the subscription.

    Paid in advance: the unused time ``[t, end)`` is credited (``NONE``: no credit, the
    customer keeps paying the whole period). Paid in arrears: the used time ``[since, t)``
    is charged (``NONE``: the whole open part ``[since, end)``, not prorated).
    """
    if before.status not in (S.ACTIVE, S.PAUSED) or before.current_period_end is None:
        return Proration((), after)
    assert before.current_period_start is not None
    nominal = nominal_period(before, plan)
    t = floor_to_second(nominal, max(at, before.current_period_start))
    state = fee_state(before, plan, charged_in_advance)
    if behavior is Behavior.NONE:
        if state.settled is Settled.POSTPAID:
            assert state.since is not None
            return Proration(tuple(_keep(fee_piece(plan, state.since, before.current_period_end, nominal))), after)
        return Proration((), after)
    return Proration(tuple(_settle_old(before, plan, state, t, nominal)), after)


def on_pause(before: Subscription, plan: PlanSpec, after: Subscription, at: datetime, *,
             charged_in_advance: bool) -> Proration:
    """A pause at ``at``: the period is settled up to the pause and nothing is charged after it.

    Paid in advance: ``[t, end)`` is credited now (a pause may never end, so its credit
    cannot wait for the resume); paid in arrears: the used part ``[since, t)`` is charged.
    """
    if before.status is not S.ACTIVE or before.current_period_end is None:
        return Proration((), after)
    assert before.current_period_start is not None
    nominal = nominal_period(before, plan)
    t = floor_to_second(nominal, max(at, before.current_period_start))
    state = fee_state(before, plan, charged_in_advance)
    lines = _settle_old(before, plan, state, t, nominal)
    return Proration(tuple(lines), replace(after, period_fee_from=before.current_period_end))


def on_resume(before: Subscription, plan: PlanSpec, after: Subscription, at: datetime) -> Proration:
    """A resume at ``at``: the rest of the current period, ``[t, end)``, is charged at its close.

    (In advance and in arrears alike: the close is the next invoice either way, and a change
    before it settles that part like any other.)

    A resume that takes effect before the current period started (a scheduled resume,
    ``pause_resumes_at``, carried out after a billing run had already closed that time as
    paused): the closed time ``[at, current period start)`` was charged by nobody, so it is
    charged now as used time (``resumed_late_lines``), and the whole current period is
    chargeable at its close. Paused time ends at ``at`` whenever the resume is carried out."""
    if before.status is not S.PAUSED or after.current_period_end is None:
        return Proration((), after)
    assert after.current_period_start is not None
    nominal = nominal_period(after, plan)
    t = floor_to_second(nominal, max(at, after.current_period_start))
    lines = resumed_late_lines(after, plan, at)
    return Proration(lines, replace(after, period_fee_from=t))


#: At most this many closed periods are charged by one late resume (a daily plan a year late is 366).
MAX_LATE_PERIODS = 1000


def resumed_late_lines(sub: Subscription, plan: PlanSpec, at: datetime) -> tuple[Line, ...]:
    """The base fee of ``[at, sub.current_period_start)``: time after a resume that periods
    already closed as paused (which charged nothing after the pause) left unbilled.

    One ``proration_charge`` ("used time") line per anchor-aligned period of ``plan`` the
    span touches, each its exact share of that period, to the second (``at`` counts from
    the whole second it falls in, like every event). Nothing when ``at`` is not before the
    current period's start. Priced at ``plan`` (the plan in effect at the resume)."""
    start = sub.current_period_start
    if start is None or at >= start or not plan.base_fee:
        return ()
    anchor = sub.billing_anchor or start
    lines: list[Line] = []
    cursor = at
    while cursor < start:
        if len(lines) >= MAX_LATE_PERIODS:
            raise ValueError(f"subscription {sub.id}: resume more than {MAX_LATE_PERIODS} periods late")
        nominal = period_containing(anchor, plan.interval, plan.interval_count, cursor, zone=sub.time_zone)
        a = floor_to_second(nominal, cursor)
        b = min(nominal[1], start)
        lines += _keep(charge_line(plan, a, b, nominal, used=True))
        cursor = nominal[1]
    return tuple(lines)

"""Closing a billing period: the invoice lines it produces and the subscription's next state.

Pure: no I/O, no clock. The billing run (``billing.services.period_close``) loads a due
subscription, its plan(s) and the period's usage totals, calls ``close_period`` once per
ended period and persists the outcome in one transaction. What a closed period bills, and
the next state: docs/billing.md ("What a closed period bills"); the invoice request id:
docs/billing.md (the contract).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from functools import lru_cache
from hashlib import sha1
from decimal import Decimal
from typing import Mapping, Sequence

from billing.domain import proration
from billing.domain.invoice_assembly import Discount, assemble, usage_charge_lines
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.periods import period_containing
from billing.domain.progressive import with_billed
from billing.domain.plans import BillingTiming, PlanSpec
from fractions import Fraction

from billing.domain.pricing import Line, PeriodUsage, base_fee_line, period_usage, price_usage, total
from billing.domain.subscriptions import Subscription
from billing.domain.events import EventType

__all__ = ["NAMESPACE", "PeriodUsage", "period_usage", "ClosedPeriod", "invoice_request_id", "close_period", "is_due"]

S = SubscriptionStatus

#: Namespace of invoice request ids. Never change it: ids must stay stable across releases.
NAMESPACE = uuid.UUID("5b0e7c52-2f3b-4c64-9a7e-0c1d3f6a8e21")

#: Statuses a run bills; pending has no period yet and canceled has no next one.
BILLABLE = (S.TRIALING, S.ACTIVE, S.PAUSED)


@dataclass(frozen=True)
class ClosedPeriod:
    invoice_request_id: uuid.UUID
    period_start: datetime
    period_end: datetime
    currency: str
    lines: tuple[Line, ...]
    total: Decimal
    subscription: Subscription  # the state after the period closed
    event: str  # what the advance amounts to, for the audit trail and events
    discounts: tuple[Discount, ...] = ()  # the subscription's discounts after this close counted


def invoice_request_id(tenant_id: uuid.UUID, subscription_id: uuid.UUID, period_start: datetime) -> uuid.UUID:
    """uuid5(NAMESPACE, "<tenant>/<subscription>/<period start, isoformat()>"), the contract
    with the invoicing service (docs/billing.md), computed for a run's thousands of ids:
    uuid.uuid5 re-imports hashlib and re-encodes the namespace on every call, and the UUID
    is made from its integer without UUID.__init__'s argument checks (a test pins the
    result to uuid.uuid5's for any ids and time).
    """
    name = f"{_text(tenant_id)}/{subscription_id}/{period_start.isoformat()}".encode()
    digest = int.from_bytes(sha1(_NAMESPACE_BYTES + name).digest()[:16])
    u = _new_uuid(uuid.UUID)
    _set(u, "int", (digest & _VERSION_MASK) | _VERSION_5)
    _set(u, "is_safe", uuid.SafeUUID.unknown)
    return u


_NAMESPACE_BYTES = NAMESPACE.bytes
_new_uuid, _set = object.__new__, object.__setattr__
# RFC 4122 variant and version 5, as UUID(bytes=..., version=5) sets them.
_VERSION_MASK = ~((0xc000 << 48) | (0xf000 << 64))
_VERSION_5 = (0x8000 << 48) | (5 << 76)


@lru_cache(maxsize=64)
def _text(tenant_id: uuid.UUID) -> str:
    return str(tenant_id)  # the same few tenants, thousands of times per chunk


def is_due(sub: Subscription, as_of: datetime) -> bool:
    return sub.status in BILLABLE and sub.current_period_end is not None and sub.current_period_end <= as_of


_FIELDS = frozenset(f.name for f in fields(Subscription))


def _evolve(sub: Subscription, **changes: object) -> Subscription:
    """``dataclasses.replace`` for the hot path of a run: the same new frozen Subscription
    (it has no __post_init__ to run) without replace's per-field checks and the frozen
    __init__'s setattr per field (docs/billing.md, Throughput)."""
    if not changes.keys() <= _FIELDS:
        raise TypeError(f"not fields of Subscription: {sorted(changes.keys() - _FIELDS)}")
    new = object.__new__(Subscription)
    state = new.__dict__
    state.update(sub.__dict__)
    state.update(changes)
    return new


def _next_state(sub: Subscription, plan: PlanSpec, next_plan: PlanSpec | None) -> tuple[Subscription, PlanSpec, str]:
    end = sub.current_period_end
    assert end is not None  # only a started subscription's period is closed
    if sub.cancel_at_period_end:
        return (_evolve(sub, status=S.CANCELED, canceled_at=end, cancel_at_period_end=False, pending_plan_id=None,
                        pending_change_at=None, period_fee_from=None), plan, EventType.CANCELED)
    new, spec, event = sub, plan, EventType.PERIOD_ADVANCED
    if sub.pending_plan_id is not None and (sub.pending_change_at is None or sub.pending_change_at <= end):
        if next_plan is None:
            raise ValueError(f"subscription {sub.id} has a pending change to plan {sub.pending_plan_id}: "
                             "its spec is needed to close the period")
        new = _evolve(new, plan_id=sub.pending_plan_id, pending_plan_id=None, pending_change_at=None)
        if (next_plan.interval, next_plan.interval_count) != (plan.interval, plan.interval_count):
            new = _evolve(new, billing_anchor=end)  # the new plan's periods start at the change
        spec, event = next_plan, EventType.PLAN_CHANGED
    if sub.status is S.TRIALING:
        new = _evolve(new, status=S.ACTIVE, trial_end=sub.trial_end or end)
        event = EventType.TRIAL_ENDED
    anchor = new.billing_anchor or end
    next_end = period_containing(anchor, spec.interval, spec.interval_count, end, zone=new.time_zone)[1]
    # A new period starts with nothing settled; one that starts paused has nothing to charge.
    # Set here, in the same _evolve: one new object per close.
    fee_from = next_end if new.status is S.PAUSED else None
    return (_evolve(new, current_period_start=end, current_period_end=next_end, period_fee_from=fee_from),
            spec, event)


def close_period(tenant_id: uuid.UUID, sub: Subscription, plan: PlanSpec, usage: Mapping[str, PeriodUsage], *,
                 next_plan: PlanSpec | None = None, charged_in_advance: bool = True,
                 extra_lines: Sequence[Line] = (), discounts: Sequence[Discount] = (),
                 progressive_billed: Decimal = Decimal(0)) -> ClosedPeriod:
    """Bill the subscription's current period, which must have ended, and advance it.

    ``plan`` is the plan in effect during the period, ``next_plan`` the pending plan (when
    a change is due at the period's end), ``usage`` the period's totals by metric code.
    ``charged_in_advance`` is False when no earlier run opened this period (see above).
    ``extra_lines`` (late usage lines, pending adjustment lines) are appended as they are,
    already rounded; they must be in the plan's currency. ``discounts``: the subscription's
    discounts in their order (``invoice_assembly.discount_lines``); those that count this
    close come back in ``ClosedPeriod.discounts`` with ``used`` + 1.
    The lines: charges, then ``invoice_assembly.assemble`` (discounts, commitment, credits).
    ``progressive_billed``: what threshold invoices charged for this period already
    (``domain/progressive``), subtracted last as one ``progressive_billed`` line, after the
    commitment true-up (which sees the whole period) and before credits.
    """
    if sub.status not in BILLABLE or sub.current_period_start is None or sub.current_period_end is None:
        raise ValueError(f"subscription {sub.id} is {sub.status.value}: it has no period to close")
    start, end = sub.current_period_start, sub.current_period_end
    after, spec, event = _next_state(sub, plan, next_plan)
    trial = sub.status is S.TRIALING
    lines: list[Line] = []
    if not trial and plan.base_fee:
        nominal = proration.nominal_period(sub, plan)
        if sub.period_fee_from is not None:  # settled up to period_fee_from by proration
            if sub.period_fee_from < end and sub.status is not S.PAUSED:
                lines.extend(_piece(plan, max(sub.period_fee_from, start), end, nominal))
        elif plan.billing_timing is BillingTiming.IN_ADVANCE:
            if not charged_in_advance:
                lines.extend(_piece(plan, start, end, nominal))
        elif not _paused_all_along(sub, start):
            lines.extend(_piece(plan, start, end, nominal))
    # The next period's fee in advance: only for a subscription that goes on, unpaused.
    if after.status is S.ACTIVE and spec.billing_timing is BillingTiming.IN_ADVANCE and spec.base_fee:
        assert after.current_period_start is not None and after.current_period_end is not None
        lines.extend(_piece(spec, after.current_period_start, after.current_period_end,
                            proration.nominal_period(after, spec)))
    if not trial:
        lines.extend(usage_charge_lines(price_usage(plan, usage, start, end), plan.currency, start, end))
    lines.extend(extra_lines)
    # A discount counts every close made after it was created, trials excepted.
    counted = [] if trial else [d for d in discounts if d.applies()]
    share = _billed_share(sub, plan) if plan.minimum_commitment and not trial else None
    final = assemble(plan, lines, counted, commitment_share=share, period_start=start, period_end=end)
    if progressive_billed:
        final = with_billed(final, progressive_billed, start, end)
    later = tuple(discounts) if trial else tuple(_evolve_discount(d) if d.applies() else d for d in discounts)
    return ClosedPeriod(invoice_request_id(tenant_id, sub.id, start), start, end, plan.currency, final,
                        total(final), after, event, later)


def _evolve_discount(d: Discount) -> Discount:
    return Discount(d.id, d.kind, d.value, d.applies_to, d.periods, d.used + 1)


def _billed_share(sub: Subscription, plan: PlanSpec) -> Fraction:
    """The part of the nominal period the subscription was billable in (the commitment's
    share): from the start, or from where proration settled it (``period_fee_from``), to
    the end; none for a period paused all along."""
    start, end = sub.current_period_start, sub.current_period_end
    assert start is not None and end is not None
    if _paused_all_along(sub, start):
        return Fraction(0)
    a = start if sub.period_fee_from is None else min(max(sub.period_fee_from, start), end)
    return proration.share(proration.nominal_period(sub, plan), a, end)


def _piece(plan: PlanSpec, a: datetime, b: datetime, nominal: tuple[datetime, datetime]) -> list[Line]:
    """The base fee of ``[a, b)``: the whole fee for a whole period, else its exact share."""
    if (a, b) == nominal:  # a whole period: no share to compute (proration.fee_piece does the same)
        return [base_fee_line(plan, a, b)]
    line = proration.fee_piece(plan, a, b, nominal)
    return [line] if line is not None else []


def _paused_all_along(sub: Subscription, start: datetime) -> bool:
    return sub.status is S.PAUSED and sub.paused_at is not None and sub.paused_at <= start

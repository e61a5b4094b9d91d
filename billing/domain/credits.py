"""Prepaid credit grants: what an invoice burns, in which order, and what expires.

Pure: no I/O, no clock. Credits are the LAST stage of an invoice (docs/billing.md,
"Credits"): charges -> discounts -> commitment true-up -> credits, so `apply_credits`
takes the amount due after everything else. The burn-down order is fixed: priority
(lower first), then the earliest expiry (a grant without one last), then the oldest
(effective time, then id). A grant is never burned below zero and an invoice is never
credited below zero. The billing time of a closed period is its end: a grant applies to
a period's invoice when it is effective at the period's end and has not expired by then.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Iterable, Mapping

from billing.domain.errors import Violations
from billing.domain.invoicing import ClosedPeriod
from billing.domain.money import decimal_to_str, minor_units, parse_decimal, validate_currency
from billing.domain.pricing import Line

__all__ = ["Grant", "Applied", "Expired", "CreditOutcome", "CreditBook", "GrantInput", "apply_credits",
           "burn_order", "check_grant", "credit_line", "status_of", "KIND"]

#: The kind of an invoice line that burns a grant.
KIND = "credit"
#: Bounds of a grant's priority (lower burns first).
MIN_PRIORITY, MAX_PRIORITY = 0, 1_000_000
MAX_DESCRIPTION = 500
_ZERO = Decimal(0)


@dataclass(frozen=True)
class Grant:
    """A grant as billing sees it: its balance before the invoice being computed."""

    id: uuid.UUID
    customer_id: str
    subscription_id: uuid.UUID | None  # None: any subscription of the customer in `currency`
    currency: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    remaining: Decimal


@dataclass(frozen=True)
class Applied:
    grant_id: uuid.UUID
    amount: Decimal  # positive: what the invoice burned
    remaining: Decimal  # the grant's balance after it


@dataclass(frozen=True)
class Expired:
    grant_id: uuid.UUID
    amount: Decimal  # the rest that expired
    at: datetime  # the grant's expiry


@dataclass(frozen=True)
class CreditOutcome:
    lines: tuple[Line, ...]  # one `credit` line per grant applied, negative, in burn order
    applied: tuple[Applied, ...]
    expired: tuple[Expired, ...]
    balances: Mapping[uuid.UUID, Decimal]  # every grant given, after this invoice

    @property
    def credited(self) -> Decimal:
        return sum((a.amount for a in self.applied), _ZERO)


def burn_order(grant: Grant) -> tuple[int, bool, datetime, datetime, int]:
    """The sort key of the burn-down order: priority, earliest expiry (none last), oldest."""
    expiry = grant.expires_at or grant.effective_at  # ignored when there is none: the flag sorts it last
    return (grant.priority, grant.expires_at is None, expiry, grant.effective_at, grant.id.int)


def credit_line(grant_id: uuid.UUID, amount: Decimal, currency: str, period_start: datetime,
                period_end: datetime) -> Line:
    """The invoice line of one application: negative, naming the grant (`credit grant <id>`)."""
    return Line(kind=KIND, description=f"Credit grant {grant_id} ({decimal_to_str(amount)} {currency})",
                metric_code=None, quantity=Decimal(1), unit_price=-amount, amount=-amount,
                period_start=period_start, period_end=period_end)


def apply_credits(amount_due: Decimal, grants: Iterable[Grant], *, currency: str, at: datetime,
                  period: tuple[datetime, datetime]) -> CreditOutcome:
    """Burn `grants` against `amount_due` (the invoice's total after every other stage).

    Grants of another currency are left alone; a grant whose expiry is at or before `at`
    expires with its rest; one effective after `at` waits. Returns the credit lines, the
    applications, the expiries and every grant's new balance."""
    balances: dict[uuid.UUID, Decimal] = {}
    usable: list[Grant] = []
    expired: list[Expired] = []
    for g in grants:
        balances[g.id] = g.remaining
        if g.currency != currency or g.remaining <= 0:
            continue
        if g.expires_at is not None and g.expires_at <= at:
            expired.append(Expired(g.id, g.remaining, g.expires_at))
            balances[g.id] = _ZERO
        elif g.effective_at <= at:
            usable.append(g)
    due = amount_due
    lines: list[Line] = []
    applied: list[Applied] = []
    for g in sorted(usable, key=burn_order):
        if due <= 0:
            break
        burn = min(g.remaining, due)
        due -= burn
        balances[g.id] = g.remaining - burn
        applied.append(Applied(g.id, burn, balances[g.id]))
        lines.append(credit_line(g.id, burn, currency, *period))
    return CreditOutcome(tuple(lines), tuple(applied), tuple(sorted(expired, key=lambda e: (e.at, e.grant_id.int))),
                         balances)


class CreditBook:
    """The open grants of a chunk of subscriptions and their balances as the chunk's
    invoices burn them, in the order they are computed (a customer's grant is shared by
    its subscriptions). `apply` is the credits stage of a closed period."""

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._grants: dict[uuid.UUID, Grant] = {}
        self._by_subscription: dict[uuid.UUID, list[uuid.UUID]] = {}
        self._by_customer: dict[str, list[uuid.UUID]] = {}
        for g in grants:
            self._grants[g.id] = g
            if g.subscription_id is not None:
                self._by_subscription.setdefault(g.subscription_id, []).append(g.id)
            else:
                self._by_customer.setdefault(g.customer_id, []).append(g.id)

    def __bool__(self) -> bool:
        return bool(self._grants)

    def mark(self) -> dict[uuid.UUID, Grant]:
        """The balances as they are, for `restore` when a subscription's invoices are dropped."""
        return dict(self._grants)

    def restore(self, mark: dict[uuid.UUID, Grant]) -> None:
        self._grants = dict(mark)

    def apply(self, subscription_id: uuid.UUID, customer_id: str,
              closed: ClosedPeriod) -> tuple[ClosedPeriod, CreditOutcome | None]:
        """`closed` with its credit lines and total, and what was burned and expired (None:
        nothing). A period without lines has no invoice request, so nothing to credit."""
        ids = self._by_subscription.get(subscription_id, []) + self._by_customer.get(customer_id, [])
        if not ids or not closed.lines:
            return closed, None
        outcome = apply_credits(closed.total, [self._grants[i] for i in ids], currency=closed.currency,
                                at=closed.period_end, period=(closed.period_start, closed.period_end))
        if not outcome.applied and not outcome.expired:
            return closed, None
        for grant_id, balance in outcome.balances.items():
            self._grants[grant_id] = replace(self._grants[grant_id], remaining=balance)
        if not outcome.lines:
            return closed, outcome
        return replace(closed, lines=closed.lines + outcome.lines, total=closed.total - outcome.credited), outcome


def status_of(remaining: Decimal, voided: bool, effective_at: datetime, expires_at: datetime | None,
              now: datetime) -> str:
    """What ListCreditGrants shows: voided, expired (an expiry not recorded yet by a billing
    counts too), depleted, scheduled (not effective yet) or active."""
    if voided:
        return "voided"
    if expires_at is not None and expires_at <= now:
        return "expired"
    if remaining <= 0:
        return "depleted"
    return "scheduled" if effective_at > now else "active"


@dataclass(frozen=True)
class GrantInput:
    amount: Decimal
    currency: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    description: str


def check_grant(*, amount: str, currency: str, priority: int, effective_at: datetime,
                expires_at: datetime | None, description: str) -> GrantInput:
    """Every violation of a grant's fields at once (ValidationError naming each field).
    `currency` "" is not known yet (a subscription's grant takes its plan's): the amount's
    decimal places are then checked once it is."""
    v = Violations()
    cur = v.check(validate_currency, currency, "currency") if currency else ""
    value = v.check(parse_decimal, amount, "amount", allow_zero=False)
    if value is not None and cur and value != value.quantize(Decimal(1).scaleb(-minor_units(cur))):
        v.items.append(("amount", f"has more decimal places than {cur} allows ({minor_units(cur)})"))
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        v.items.append(("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"))
    if expires_at is not None and expires_at <= effective_at:
        v.items.append(("expires_at", "must be after effective_at"))
    if len(description) > MAX_DESCRIPTION or not description.isprintable():
        v.items.append(("description", f"must be at most {MAX_DESCRIPTION} printable characters"))
    v.raise_if_any()
    assert value is not None and cur is not None
    return GrantInput(value, cur, priority, effective_at, expires_at, description)

"""Prepaid credit grants: create, list (with balances), void. gRPC and the command consumer
call these; billing runs burn the grants (`domain.credits`, wired in `period_close`).

Each mutation is one transaction: idempotency key claimed, the grant written (or locked),
an audit row (entity_type `credit_grant`) and an event on the subscription events stream.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Mapping

from billing.domain import credits as rules
from billing.domain.events import EventType
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import decimal_to_str
from billing.services import audit, events, idempotency, paging, plans
from billing.services.context import Caller
from billing.services.errors import AlreadyExists, FailedPrecondition, NotFound, ValidationError, Violations
from billing.store import credits as store
from billing.store import subscriptions as subscription_store

MAX_CUSTOMER_ID = 255


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class GrantView:
    """A grant with its balances: granted = applied + expired + voided + remaining."""

    id: uuid.UUID
    customer_id: str
    subscription_id: uuid.UUID | None
    currency: str
    granted: Decimal
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    description: str
    applied: Decimal
    expired: Decimal
    voided: Decimal
    remaining: Decimal
    status: str
    created_at: datetime
    voided_at: datetime | None


@dataclass(frozen=True)
class GrantPage:
    grants: list[GrantView]
    next_page_token: str


def view_of(row: store.GrantRow, at: datetime) -> GrantView:
    """The balances as they stand at `at`: the rest of a grant past its expiry counts as
    expired even before a billing records the expiry in the ledger."""
    remaining, expired = row.remaining, row.expired
    status = rules.status_of(row.remaining, row.voided_at is not None, row.effective_at, row.expires_at, at)
    if status == "expired" and remaining > 0:
        remaining, expired = Decimal(0), expired + remaining
    return GrantView(row.id, row.customer_id, row.subscription_id, row.currency, row.amount, row.priority,
                     row.effective_at, row.expires_at, row.description, row.applied, expired, row.voided, remaining,
                     status, row.created_at, row.voided_at)


def _outcome(v: GrantView) -> dict:
    return {"id": str(v.id), "at": v.created_at.isoformat() if v.voided_at is None else v.voided_at.isoformat()}


def _snapshot(row: store.GrantRow) -> dict:
    return {"customer_id": row.customer_id, "subscription_id": str(row.subscription_id or "") or None,
            "currency": row.currency, "amount": decimal_to_str(row.amount), "priority": row.priority,
            "effective_at": row.effective_at.isoformat(),
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            "remaining": decimal_to_str(row.remaining), "description": row.description,
            "voided_at": row.voided_at.isoformat() if row.voided_at else None}


def _event_data(row: store.GrantRow, **more: str) -> dict[str, str]:
    data = {"grant_id": str(row.id), "amount": decimal_to_str(row.amount), "currency": row.currency,
            "priority": str(row.priority), "effective_at": row.effective_at.isoformat()}
    if row.expires_at is not None:
        data["expires_at"] = row.expires_at.isoformat()
    return {**data, **more}


async def create_grant(db, caller: Caller, request_id: str, *, amount: str, currency: str, priority: int,
                       subscription_id: str = "", customer_id: str = "", effective_at: datetime | None = None,
                       expires_at: datetime | None = None, description: str = "", grant_id: str = "") -> GrantView:
    """A grant to `subscription_id`, or to every subscription of `customer_id` in
    `currency` when no subscription is named. `currency` may be left empty for a
    subscription's grant (its plan's currency). `grant_id`: a command producer's own id."""
    at = now()
    v = Violations()
    v.check(idempotency.check_key, request_id)
    sub_uuid = v.check(paging.parse_uuid, subscription_id, "subscription_id") if subscription_id else None
    new_id = v.check(paging.parse_uuid, grant_id, "grant_id") if grant_id else uuid.uuid4()
    if not subscription_id and not customer_id:
        v.items.append(("customer_id", "is required for a grant to a customer (no subscription_id)"))
    if len(customer_id) > MAX_CUSTOMER_ID or not customer_id.isprintable():
        v.items.append(("customer_id", f"must be at most {MAX_CUSTOMER_ID} printable characters"))
    if not subscription_id and not currency:
        v.items.append(("currency", "is required for a grant to a customer"))
    if expires_at is not None and expires_at <= at:
        v.items.append(("expires_at", "must be in the future"))
    effective = effective_at or at
    grant = v.check(rules.check_grant, amount=amount, currency=currency, priority=priority,
                    effective_at=effective, expires_at=expires_at, description=description)
    v.raise_if_any()
    assert grant is not None and new_id is not None
    payload = {"grant_id": grant_id, "subscription_id": str(sub_uuid or ""), "customer_id": customer_id,
               "currency": currency, "amount": decimal_to_str(grant.amount), "priority": priority,
               "effective_at": effective_at, "expires_at": expires_at, "description": description}
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "CreateCreditGrant", payload)
        if replay is not None:
            row = await store.get(conn, caller.tenant_id, uuid.UUID(replay["id"]))
            assert row is not None  # grants are never deleted
            return view_of(row, datetime.fromisoformat(replay["at"]))
        if sub_uuid is not None:
            sub = await subscription_store.get(conn, caller.tenant_id, sub_uuid)
            if sub is None:
                raise NotFound("subscription", subscription_id)
            if customer_id and customer_id != sub.customer_id:
                raise ValidationError("customer_id", f"is not the subscription's customer {sub.customer_id!r}")
            if sub.status is SubscriptionStatus.CANCELED:
                raise FailedPrecondition(f"subscription {subscription_id} is canceled: nothing left to credit",
                                         reason="SUBSCRIPTION_CANCELED")
            plan = await plans.load(conn, caller.tenant_id, sub.plan_id)
            assert plan is not None  # a subscription's plan is never deleted
            if currency and currency != plan.spec.currency:
                raise ValidationError("currency", f"must be the subscription's plan currency {plan.spec.currency}, "
                                                  f"got {currency}")
            customer_id, currency = sub.customer_id, plan.spec.currency
            grant = rules.check_grant(amount=amount, currency=currency, priority=priority, effective_at=effective,
                                      expires_at=expires_at, description=description)
        if not await store.insert_grant(conn, caller.tenant_id, new_id, customer_id=customer_id,
                                        subscription_id=sub_uuid, currency=currency, amount=grant.amount,
                                        priority=priority, effective_at=effective, expires_at=expires_at,
                                        description=description):
            raise AlreadyExists(f"credit grant {grant_id!r} already exists", reason="CREDIT_GRANT_EXISTS")
        row = await store.get(conn, caller.tenant_id, new_id)
        assert row is not None
        await audit.record_change(conn, caller, entity_type="credit_grant", entity_id=new_id,
                                  action=EventType.CREDIT_GRANTED, before=None, after=_snapshot(row),
                                  request_id=request_id)
        await events.emit(conn, caller, event_type=EventType.CREDIT_GRANTED, subscription_id=str(sub_uuid or ""),
                          customer_id=customer_id, occurred_at=at, cause=request_id, data=_event_data(row))
        view = view_of(row, at)
        await idempotency.remember(conn, caller, request_id, _outcome(view))
        return view


async def void_grant(db, caller: Caller, request_id: str, grant_id: str) -> GrantView:
    """The grant's rest is recorded as voided and it burns no more; what it paid stays paid."""
    idempotency.check_key(request_id)
    grant_uuid = paging.parse_uuid(grant_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "VoidCreditGrant", {"id": str(grant_uuid)})
        if replay is not None:
            row = await store.get(conn, caller.tenant_id, grant_uuid)
            assert row is not None
            return view_of(row, datetime.fromisoformat(replay["at"]))
        before = await store.get(conn, caller.tenant_id, grant_uuid, for_update=True)
        if before is None:
            raise NotFound("credit grant", grant_id)
        if before.voided_at is not None:
            raise FailedPrecondition(f"credit grant {grant_id} is voided already", reason="CREDIT_GRANT_VOIDED")
        at = now()
        rest = view_of(before, at).remaining
        if before.expires_at is not None and before.expires_at <= at and before.remaining > 0:
            # Past its expiry, its rest expired (no billing recorded it yet): not voided.
            await store.add_entries(conn, caller.tenant_id, [store.Entry(
                grant_uuid, "expired", before.remaining, None, None, None, before.expires_at)])
        await store.void(conn, caller.tenant_id, grant_uuid, at, rest)
        row = await store.get(conn, caller.tenant_id, grant_uuid)
        assert row is not None
        await audit.record_change(conn, caller, entity_type="credit_grant", entity_id=grant_uuid,
                                  action=EventType.CREDIT_VOIDED, before=_snapshot(before), after=_snapshot(row),
                                  request_id=request_id)
        await events.emit(conn, caller, event_type=EventType.CREDIT_VOIDED,
                          subscription_id=str(row.subscription_id or ""), customer_id=row.customer_id,
                          occurred_at=at, cause=request_id, data=_event_data(row, voided=decimal_to_str(rest)))
        view = view_of(row, at)
        await idempotency.remember(conn, caller, request_id, _outcome(view))
        return view


async def list_grants(db, caller: Caller, *, tokens: paging.PageTokens, page_size: int, page_token: str,
                      subscription_id: str, customer_id: str) -> GrantPage:
    limit = paging.page_size(page_size)
    sub_uuid = paging.parse_uuid(subscription_id, "subscription_id") if subscription_id else None
    customer_id = paging.filter_text(customer_id, "customer_id")
    filters: Mapping[str, str] = {"subscription_id": str(sub_uuid or ""), "customer_id": customer_id}
    after = tokens.decode(page_token, "ListCreditGrants", caller.tenant_id, dict(filters))
    at = now()
    async with db.tenant_tx(caller.tenant_id) as conn:
        rows = await store.list_page(conn, caller.tenant_id, subscription_id=sub_uuid,
                                     customer_id=customer_id or None, after=after, limit=limit + 1)
    token = tokens.encode("ListCreditGrants", caller.tenant_id, dict(filters), rows[limit - 1].created_at,
                          rows[limit - 1].id) if len(rows) > limit else ""
    return GrantPage([view_of(r, at) for r in rows[:limit]], token)

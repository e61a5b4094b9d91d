"""Discounts of a subscription: create, list, delete (docs/api.md, Discounts). Applied by the
period close (``invoice_assembly.discount_lines``); the chunk reads them with ``live_for``.

Every change is idempotent by request_id, audited (entity ``discount``) and holds the
subscription's row locked, like the run that bills it: a discount is in a close or not,
never half.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing.domain.discounts import DiscountInput, parse_discount
from billing.domain.invoice_assembly import Discount, DiscountKind
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import decimal_to_str
from billing.domain.plan_storage import plan_from_dict
from billing.services import audit, idempotency, paging, subscription_pages
from billing.services.context import Caller
from billing.services.errors import FailedPrecondition, NotFound, Violations
from billing.services.soft_delete import soft_delete
from billing.store import discounts as store
from billing.store import plans as plans_store
from billing.store import subscriptions as subs_store
from billing.store.db import Database

#: Live (not deleted) discounts one subscription may have.
MAX_LIVE_DISCOUNTS = 20


@dataclass(frozen=True)
class DiscountView:
    id: uuid.UUID
    subscription_id: uuid.UUID
    kind: DiscountKind
    value: Decimal
    applies_to: tuple[str, ...]
    periods: int | None
    used: int  # period closes counted so far
    created_at: datetime
    deleted_at: datetime | None

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> "DiscountView":
        return cls(r["id"], r["subscription_id"], DiscountKind(r["kind"]), r["value"], tuple(r["applies_to"]),
                   r["periods"], r["used"], r["created_at"], r["deleted_at"])

    def snapshot(self) -> dict:
        return {"id": str(self.id), "subscription_id": str(self.subscription_id), "kind": self.kind.value,
                "value": decimal_to_str(self.value), "applies_to": list(self.applies_to), "periods": self.periods,
                "used": self.used, "created_at": self.created_at.isoformat(),
                "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None}

    @classmethod
    def from_snapshot(cls, d: dict) -> "DiscountView":
        return cls(uuid.UUID(d["id"]), uuid.UUID(d["subscription_id"]), DiscountKind(d["kind"]), Decimal(d["value"]),
                   tuple(d["applies_to"]), d["periods"], d["used"], datetime.fromisoformat(d["created_at"]),
                   datetime.fromisoformat(d["deleted_at"]) if d["deleted_at"] else None)

    def domain(self) -> Discount:
        return Discount(str(self.id), self.kind, self.value, self.applies_to, self.periods, self.used)


async def live_for(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                   subscription_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Discount]]:
    """The live discounts of these subscriptions, in their order, as a close applies them."""
    out: dict[uuid.UUID, list[Discount]] = {}
    for r in await store.live_for(conn, tenant_id, subscription_ids):
        out.setdefault(r["subscription_id"], []).append(DiscountView.from_row(r).domain())
    return out


async def create_discount(db: Database, caller: Caller, request_id: str, subscription_id: str,
                          draft: DiscountInput) -> DiscountView:
    v = Violations()
    v.check(idempotency.check_key, request_id)
    sub_id = v.check(paging.parse_uuid, subscription_id, "subscription_id")
    # Every violation at once: a fixed amount's scale is checked against the plan's currency
    # below; here against the currency with the most minor units.
    v.check(parse_discount, draft, "CLF")
    v.raise_if_any()
    assert sub_id is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        sub = await subs_store.get(conn, caller.tenant_id, sub_id, for_update=True)
        if sub is None:
            raise NotFound("subscription", subscription_id)
        spec = plan_from_dict((await plans_store.specs(conn, caller.tenant_id, [sub.plan_id]))[0][1])
        parsed = parse_discount(draft, spec.currency)
        payload = {"subscription_id": str(sub_id), "kind": parsed.kind.value, "value": decimal_to_str(parsed.value),
                   "applies_to": list(parsed.applies_to), "periods": parsed.periods}
        replay = await idempotency.claim(conn, caller, request_id, "CreateDiscount", payload)
        if replay is not None:
            return DiscountView.from_snapshot(replay)
        if sub.status is SubscriptionStatus.CANCELED:
            raise FailedPrecondition(f"subscription {subscription_id} is canceled: it is billed no more",
                                     reason="SUBSCRIPTION_CANCELED")
        if await store.live_count(conn, caller.tenant_id, sub_id) >= MAX_LIVE_DISCOUNTS:
            raise FailedPrecondition(f"subscription {subscription_id} has {MAX_LIVE_DISCOUNTS} discounts already "
                                     "(delete one first)", reason="TOO_MANY_DISCOUNTS")
        row = await store.insert(conn, caller.tenant_id, uuid.uuid4(), sub_id, parsed.kind.value, parsed.value,
                                 list(parsed.applies_to), parsed.periods)
        view = DiscountView.from_row(row)
        await audit.record_change(conn, caller, entity_type="discount", entity_id=view.id, action="discount.created",
                                  before=None, after=view.snapshot(), request_id=request_id)
        await idempotency.remember(conn, caller, request_id, view.snapshot())
        return view


async def list_discounts(db: Database, caller: Caller, subscription_id: str, *, tokens: paging.PageTokens,
                         page_size: int, page_token: str, include_deleted: bool) -> tuple[list[DiscountView], str]:
    """A page of the subscription's discounts in the order a close applies them, and the
    next page's token ("" on the last page)."""
    return await subscription_pages.page_of(
        db, caller, "ListDiscounts", subscription_id, tokens=tokens, page_size=page_size, page_token=page_token,
        include_deleted=include_deleted, list_page=store.list_page, view=DiscountView.from_row)


async def delete_discount(db: Database, caller: Caller, request_id: str, discount_id: str) -> DiscountView:
    """The discount applies to no close after this one commits; deleting it again returns it
    unchanged."""
    return await soft_delete(db, caller, request_id, discount_id, entity="discount", method="DeleteDiscount",
                             get=store.get, delete=store.delete, view=DiscountView.from_row,
                             from_snapshot=DiscountView.from_snapshot, before_change=_lock_subscription)


async def _lock_subscription(conn: asyncpg.Connection, tenant_id: uuid.UUID, row: asyncpg.Record) -> None:
    """The discount's subscription row, locked like the run that bills it takes it."""
    await subs_store.get(conn, tenant_id, row["subscription_id"], for_update=True)

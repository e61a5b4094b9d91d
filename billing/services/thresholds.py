"""Usage thresholds of a subscription: create, list, delete (docs/alerts.md). Crossed by
the usage ingest path (services/usage_alerts.py).

Every change is idempotent by request_id and audited (entity ``threshold``). A threshold
watches the period total its metric's charge is priced on (the plan's aggregation, fixed
at creation); a deleted one is kept, with its crossings, and fires no more.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import decimal_to_str
from billing.domain.plan_storage import plan_from_dict
from billing.domain.thresholds import MEASURES, measure_of, parse_value
from billing.services import audit, idempotency, paging, subscription_pages
from billing.services.context import Caller
from billing.services.errors import FailedPrecondition, NotFound, ValidationError, Violations
from billing.store import plans as plans_store
from billing.store import subscriptions as subs_store
from billing.store import thresholds as store
from billing.store.db import Database

#: Live (not deleted) thresholds one subscription may have.
MAX_LIVE_THRESHOLDS = 50
_AGGREGATION_OF = {column: aggregation.value for aggregation, column in MEASURES.items()}


@dataclass(frozen=True)
class ThresholdView:
    id: uuid.UUID
    subscription_id: uuid.UUID
    metric_code: str
    value: Decimal
    recurring: bool
    aggregation: str  # sum, count, max or latest
    created_at: datetime
    deleted_at: datetime | None

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> "ThresholdView":
        return cls(r["id"], r["subscription_id"], r["metric_code"], r["value"], r["recurring"],
                   _AGGREGATION_OF[r["measure"]], r["created_at"], r["deleted_at"])

    def snapshot(self) -> dict:
        return {"id": str(self.id), "subscription_id": str(self.subscription_id), "metric_code": self.metric_code,
                "value": decimal_to_str(self.value), "recurring": self.recurring, "aggregation": self.aggregation,
                "created_at": self.created_at.isoformat(),
                "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None}

    @classmethod
    def from_snapshot(cls, d: dict) -> "ThresholdView":
        return cls(uuid.UUID(d["id"]), uuid.UUID(d["subscription_id"]), d["metric_code"], Decimal(d["value"]),
                   d["recurring"], d["aggregation"], datetime.fromisoformat(d["created_at"]),
                   datetime.fromisoformat(d["deleted_at"]) if d["deleted_at"] else None)


def _metric(text: str) -> str:
    if not text:
        raise ValidationError("metric_code", "is required")
    return text


async def create_threshold(db: Database, caller: Caller, request_id: str, subscription_id: str, metric_code: str,
                           value: str, *, recurring: bool = True) -> ThresholdView:
    v = Violations()
    v.check(idempotency.check_key, request_id)
    sub_id = v.check(paging.parse_uuid, subscription_id, "subscription_id")
    v.check(_metric, metric_code)
    amount = v.check(parse_value, value)
    v.raise_if_any()
    assert sub_id is not None and amount is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        sub = await subs_store.get(conn, caller.tenant_id, sub_id, for_update=True)
        if sub is None:
            raise NotFound("subscription", subscription_id)
        spec = plan_from_dict((await plans_store.specs(conn, caller.tenant_id, [sub.plan_id]))[0][1])
        charge = next((c for c in spec.usage_charges if c.metric_code == metric_code), None)
        if charge is None:
            raise ValidationError("metric_code", f"metric {metric_code[:64]!r} is not on the subscription's plan")
        measure = measure_of(charge.aggregation)
        if measure is None:
            raise ValidationError("metric_code", f"metric {metric_code[:64]!r} is aggregated by "
                                                 f"{charge.aggregation.value}, which thresholds do not support "
                                                 "(sum, count, max, latest)")
        payload = {"subscription_id": str(sub_id), "metric_code": metric_code, "value": decimal_to_str(amount),
                   "recurring": recurring}
        replay = await idempotency.claim(conn, caller, request_id, "CreateThreshold", payload)
        if replay is not None:
            return ThresholdView.from_snapshot(replay)
        if sub.status is SubscriptionStatus.CANCELED:
            raise FailedPrecondition(f"subscription {subscription_id} is canceled: it takes no more usage",
                                     reason="SUBSCRIPTION_CANCELED")
        if await store.live_count(conn, caller.tenant_id, sub_id) >= MAX_LIVE_THRESHOLDS:
            raise FailedPrecondition(f"subscription {subscription_id} has {MAX_LIVE_THRESHOLDS} thresholds already "
                                     "(delete one first)", reason="TOO_MANY_THRESHOLDS")
        row = await store.insert(conn, caller.tenant_id, uuid.uuid4(), sub_id, metric_code, measure, amount,
                                 recurring)
        view = ThresholdView.from_row(row)
        await audit.record_change(conn, caller, entity_type="threshold", entity_id=view.id,
                                  action="threshold.created", before=None, after=view.snapshot(),
                                  request_id=request_id)
        await idempotency.remember(conn, caller, request_id, view.snapshot())
        return view


async def list_thresholds(db: Database, caller: Caller, subscription_id: str, *, tokens: paging.PageTokens,
                          page_size: int, page_token: str, include_deleted: bool) -> tuple[list[ThresholdView], str]:
    """A page of the subscription's thresholds in creation order, and the next page's token
    ("" on the last page)."""
    return await subscription_pages.page_of(
        db, caller, "ListThresholds", subscription_id, tokens=tokens, page_size=page_size, page_token=page_token,
        include_deleted=include_deleted, list_page=store.list_page, view=ThresholdView.from_row)


async def delete_threshold(db: Database, caller: Caller, request_id: str, threshold_id: str) -> ThresholdView:
    """The threshold fires for no batch committed after this one; deleting it again returns
    it unchanged."""
    v = Violations()
    v.check(idempotency.check_key, request_id)
    ident = v.check(paging.parse_uuid, threshold_id, "id")
    v.raise_if_any()
    assert ident is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "DeleteThreshold", {"id": str(ident)})
        if replay is not None:
            return ThresholdView.from_snapshot(replay)
        row = await store.get(conn, caller.tenant_id, ident)
        if row is None:
            raise NotFound("threshold", threshold_id)
        before = ThresholdView.from_row(row)
        after = before
        if before.deleted_at is None:
            after = ThresholdView.from_row(await store.delete(conn, caller.tenant_id, ident))
            await audit.record_change(conn, caller, entity_type="threshold", entity_id=ident,
                                      action="threshold.deleted", before=before.snapshot(), after=after.snapshot(),
                                      request_id=request_id)
        await idempotency.remember(conn, caller, request_id, after.snapshot())
        return after

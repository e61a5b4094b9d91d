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
from billing.domain.plans import PlanSpec
from billing.domain.thresholds import AMOUNT, MEASURES, choose_value, measure_of, parse_measure, share_of
from billing.services import audit, idempotency, paging, subscription_pages
from billing.services.context import Caller
from billing.services.errors import FailedPrecondition, NotFound, ValidationError, Violations
from billing.store import plans as plans_store
from billing.store import subscriptions as subs_store
from billing.store import thresholds as store
from billing.store.db import Database

#: Live (not deleted) thresholds one subscription may have.
MAX_LIVE_THRESHOLDS = 50
_AGGREGATION_OF = {column: aggregation.value for aggregation, column in MEASURES.items()} | {AMOUNT: ""}


@dataclass(frozen=True)
class ThresholdView:
    id: uuid.UUID
    subscription_id: uuid.UUID
    metric_code: str  # "" for an amount threshold
    value: Decimal
    recurring: bool
    aggregation: str  # sum, count, max or latest ("" for an amount threshold)
    created_at: datetime
    deleted_at: datetime | None
    measure: str = "quantity"  # or "amount"
    percent: Decimal | None = None  # the share of a limit it was created as (value computed then)
    invoice_on_cross: bool = False

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> "ThresholdView":
        return cls(r["id"], r["subscription_id"], r["metric_code"] or "", r["value"], r["recurring"],
                   _AGGREGATION_OF[r["measure"]], r["created_at"], r["deleted_at"],
                   AMOUNT if r["measure"] == AMOUNT else "quantity", r["percent"], r["invoice_on_cross"])

    def snapshot(self) -> dict:
        return {"id": str(self.id), "subscription_id": str(self.subscription_id), "metric_code": self.metric_code,
                "value": decimal_to_str(self.value), "recurring": self.recurring, "aggregation": self.aggregation,
                "created_at": self.created_at.isoformat(),
                "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None,
                "measure": self.measure, "percent": decimal_to_str(self.percent) if self.percent is not None else None,
                "invoice_on_cross": self.invoice_on_cross}

    @classmethod
    def from_snapshot(cls, d: dict) -> "ThresholdView":
        percent = d.get("percent")
        return cls(uuid.UUID(d["id"]), uuid.UUID(d["subscription_id"]), d["metric_code"], Decimal(d["value"]),
                   d["recurring"], d["aggregation"], datetime.fromisoformat(d["created_at"]),
                   datetime.fromisoformat(d["deleted_at"]) if d["deleted_at"] else None,
                   d.get("measure", "quantity"), Decimal(percent) if percent is not None else None,
                   d.get("invoice_on_cross", False))


def _metric(text: str, measure: str | None) -> str:
    if measure == AMOUNT:
        if text:
            raise ValidationError("metric_code", "must be empty for an amount threshold (it watches the period's "
                                                 "running amount of every usage charge)")
        return text
    if not text:
        raise ValidationError("metric_code", "is required")
    return text


def _invoicing(invoice_on_cross: bool, measure: str | None) -> None:
    if invoice_on_cross and measure not in (AMOUNT, None):
        raise ValidationError("invoice_on_cross", "only an amount threshold (measure amount) can invoice when crossed")


async def create_threshold(db: Database, caller: Caller, request_id: str, subscription_id: str, metric_code: str,
                           value: str, *, recurring: bool = True, measure: str = "", percent: str = "",
                           invoice_on_cross: bool = False) -> ThresholdView:
    """A threshold on a metric's quantity or (measure "amount") on the period's running
    amount; `value` absolute, or `percent` of a limit of the subscription's plan, computed
    now and kept (docs/alerts.md)."""
    v = Violations()
    v.check(idempotency.check_key, request_id)
    sub_id = v.check(paging.parse_uuid, subscription_id, "subscription_id")
    kind = v.check(parse_measure, measure)
    v.check(_metric, metric_code, kind)
    chosen = v.check(choose_value, value, percent)
    v.check(_invoicing, invoice_on_cross, kind)
    v.raise_if_any()
    assert sub_id is not None and kind is not None and chosen is not None
    amount, share = chosen
    given = decimal_to_str(amount) if amount is not None else ""
    async with db.tenant_tx(caller.tenant_id) as conn:
        sub = await subs_store.get(conn, caller.tenant_id, sub_id, for_update=True)
        if sub is None:
            raise NotFound("subscription", subscription_id)
        spec = plan_from_dict((await plans_store.specs(conn, caller.tenant_id, [sub.plan_id]))[0][1])
        if kind == AMOUNT:
            column = AMOUNT
        else:
            column = _quantity_measure(spec, metric_code)
        if share is not None:
            amount = share_of(spec, kind, metric_code, share)
        assert amount is not None
        payload = {"subscription_id": str(sub_id), "metric_code": metric_code, "value": given, "percent": percent,
                   "recurring": recurring, "measure": kind, "invoice_on_cross": invoice_on_cross}
        replay = await idempotency.claim(conn, caller, request_id, "CreateThreshold", payload)
        if replay is not None:
            return ThresholdView.from_snapshot(replay)
        if sub.status is SubscriptionStatus.CANCELED:
            raise FailedPrecondition(f"subscription {subscription_id} is canceled: it takes no more usage",
                                     reason="SUBSCRIPTION_CANCELED")
        if await store.live_count(conn, caller.tenant_id, sub_id) >= MAX_LIVE_THRESHOLDS:
            raise FailedPrecondition(f"subscription {subscription_id} has {MAX_LIVE_THRESHOLDS} thresholds already "
                                     "(delete one first)", reason="TOO_MANY_THRESHOLDS")
        row = await store.insert(conn, caller.tenant_id, uuid.uuid4(), sub_id, metric_code or None, column, amount,
                                 recurring, percent=share, invoice_on_cross=invoice_on_cross)
        view = ThresholdView.from_row(row)
        await audit.record_change(conn, caller, entity_type="threshold", entity_id=view.id,
                                  action="threshold.created", before=None, after=view.snapshot(),
                                  request_id=request_id)
        await idempotency.remember(conn, caller, request_id, view.snapshot())
        return view


def _quantity_measure(spec: PlanSpec, metric_code: str) -> str:
    """The usage_totals column the plan's charge on the metric is priced from."""
    charge = next((c for c in spec.usage_charges if c.metric_code == metric_code), None)
    if charge is None:
        raise ValidationError("metric_code", f"metric {metric_code[:64]!r} is not on the subscription's plan")
    column = measure_of(charge.aggregation)
    if column is None:
        raise ValidationError("metric_code", f"metric {metric_code[:64]!r} is aggregated by "
                                             f"{charge.aggregation.value}, which thresholds do not support "
                                             "(sum, count, max, latest)")
    return column


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

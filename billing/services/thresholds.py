"""Usage thresholds of a subscription or of a plan: create, list, delete (docs/alerts.md).
Crossed by the usage ingest path (services/usage_alerts.py, services/amount_thresholds.py).

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
from billing.services.soft_delete import soft_delete
from billing.store import plans as plans_store
from billing.store import subscriptions as subs_store
from billing.store import thresholds as store
from billing.store.db import Database

#: Live (not deleted) thresholds one subscription (or one plan) may have.
MAX_LIVE_THRESHOLDS = 50
_AGGREGATION_OF = {column: aggregation.value for aggregation, column in MEASURES.items()} | {AMOUNT: ""}


@dataclass(frozen=True)
class ThresholdView:
    id: uuid.UUID
    subscription_id: uuid.UUID | None  # None for a plan's threshold
    metric_code: str  # "" for an amount threshold
    value: Decimal
    recurring: bool
    aggregation: str  # sum, count, max or latest ("" for an amount threshold)
    created_at: datetime
    deleted_at: datetime | None
    measure: str = "quantity"  # or "amount"
    percent: Decimal | None = None  # the share of a limit it was created as (value computed then)
    invoice_on_cross: bool = False
    plan_id: uuid.UUID | None = None  # a plan's threshold: it applies to every subscription on the plan

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> "ThresholdView":
        return cls(r["id"], r["subscription_id"], r["metric_code"] or "", r["value"], r["recurring"],
                   _AGGREGATION_OF[r["measure"]], r["created_at"], r["deleted_at"],
                   AMOUNT if r["measure"] == AMOUNT else "quantity", r["percent"], r["invoice_on_cross"],
                   r["plan_id"])

    def snapshot(self) -> dict:
        return {"id": str(self.id), "subscription_id": _text(self.subscription_id), "metric_code": self.metric_code,
                "value": decimal_to_str(self.value), "recurring": self.recurring, "aggregation": self.aggregation,
                "created_at": self.created_at.isoformat(),
                "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None,
                "measure": self.measure, "percent": decimal_to_str(self.percent) if self.percent is not None else None,
                "invoice_on_cross": self.invoice_on_cross, "plan_id": _text(self.plan_id)}

    @classmethod
    def from_snapshot(cls, d: dict) -> "ThresholdView":
        percent, sub, plan = d.get("percent"), d.get("subscription_id"), d.get("plan_id")
        return cls(uuid.UUID(d["id"]), uuid.UUID(sub) if sub else None, d["metric_code"], Decimal(d["value"]),
                   d["recurring"], d["aggregation"], datetime.fromisoformat(d["created_at"]),
                   datetime.fromisoformat(d["deleted_at"]) if d["deleted_at"] else None,
                   d.get("measure", "quantity"), Decimal(percent) if percent is not None else None,
                   d.get("invoice_on_cross", False), uuid.UUID(plan) if plan else None)


def _text(ident: uuid.UUID | None) -> str | None:
    return str(ident) if ident else None


def _scope(subscription_id: str, plan_id: str) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """(subscription, plan): exactly one is given."""
    if subscription_id and plan_id:
        raise ValidationError("plan_id", "give subscription_id or plan_id, not both")
    if plan_id:
        return None, paging.parse_uuid(plan_id, "plan_id")
    return paging.parse_uuid(subscription_id, "subscription_id"), None


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
                           invoice_on_cross: bool = False, plan_id: str = "") -> ThresholdView:
    """A threshold on a metric's quantity or (measure "amount") on the period's running
    amount, of a subscription or (`plan_id`) of every subscription on a plan; `value`
    absolute, or `percent` of a limit of the (subscription's) plan, computed now and kept
    (docs/alerts.md)."""
    v = Violations()
    v.check(idempotency.check_key, request_id)
    scope = v.check(_scope, subscription_id, plan_id)
    kind = v.check(parse_measure, measure)
    v.check(_metric, metric_code, kind)
    chosen = v.check(choose_value, value, percent)
    v.check(_invoicing, invoice_on_cross, kind)
    v.raise_if_any()
    assert scope is not None and kind is not None and chosen is not None
    sub_id, plan = scope
    amount, share = chosen
    given = decimal_to_str(amount) if amount is not None else ""
    async with db.tenant_tx(caller.tenant_id) as conn:
        sub = None
        if sub_id is not None:
            sub = await subs_store.get(conn, caller.tenant_id, sub_id, for_update=True)
            if sub is None:
                raise NotFound("subscription", subscription_id)
        owner_plan = sub.plan_id if sub else plan
        assert owner_plan is not None
        found = await plans_store.specs(conn, caller.tenant_id, [owner_plan])
        if not found:
            raise NotFound("plan", plan_id)
        spec = plan_from_dict(found[0][1])
        column = AMOUNT if kind == AMOUNT else _quantity_measure(spec, metric_code)
        if share is not None:
            amount = share_of(spec, kind, metric_code, share)
        assert amount is not None
        payload = {"subscription_id": _text(sub_id), "plan_id": _text(plan), "metric_code": metric_code,
                   "value": given, "percent": percent, "recurring": recurring, "measure": kind,
                   "invoice_on_cross": invoice_on_cross}
        replay = await idempotency.claim(conn, caller, request_id, "CreateThreshold", payload)
        if replay is not None:
            return ThresholdView.from_snapshot(replay)
        if sub is not None and sub.status is SubscriptionStatus.CANCELED:
            raise FailedPrecondition(f"subscription {subscription_id} is canceled: it takes no more usage",
                                     reason="SUBSCRIPTION_CANCELED")
        if await store.live_count(conn, caller.tenant_id, sub_id, plan) >= MAX_LIVE_THRESHOLDS:
            owner = f"subscription {subscription_id}" if sub else f"plan {plan_id}"
            raise FailedPrecondition(f"{owner} has {MAX_LIVE_THRESHOLDS} thresholds already (delete one first)",
                                     reason="TOO_MANY_THRESHOLDS")
        row = await store.insert(conn, caller.tenant_id, uuid.uuid4(), sub_id, metric_code or None, column, amount,
                                 recurring, plan_id=plan, percent=share, invoice_on_cross=invoice_on_cross)
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
        raise ValidationError("metric_code", f"metric {metric_code[:64]!r} is not on the plan")
    column = measure_of(charge.aggregation)
    if column is None:
        raise ValidationError("metric_code", f"metric {metric_code[:64]!r} is aggregated by "
                                             f"{charge.aggregation.value}, which thresholds do not support "
                                             "(sum, count, max, latest)")
    return column


async def list_thresholds(db: Database, caller: Caller, subscription_id: str, *, tokens: paging.PageTokens,
                          page_size: int, page_token: str, include_deleted: bool,
                          plan_id: str = "") -> tuple[list[ThresholdView], str]:
    """A page of the subscription's own thresholds (or, `plan_id`, of the plan's) in creation
    order, and the next page's token ("" on the last page)."""
    if plan_id and not subscription_id:
        return await subscription_pages.page_of(
            db, caller, "ListThresholds", plan_id, tokens=tokens, page_size=page_size, page_token=page_token,
            include_deleted=include_deleted, list_page=store.list_plan_page, view=ThresholdView.from_row,
            scope=subscription_pages.PLAN)
    if plan_id:
        raise ValidationError("plan_id", "give subscription_id or plan_id, not both")
    return await subscription_pages.page_of(
        db, caller, "ListThresholds", subscription_id, tokens=tokens, page_size=page_size, page_token=page_token,
        include_deleted=include_deleted, list_page=store.list_page, view=ThresholdView.from_row)


async def delete_threshold(db: Database, caller: Caller, request_id: str, threshold_id: str) -> ThresholdView:
    """The threshold fires for no batch committed after this one; deleting it again returns
    it unchanged."""
    return await soft_delete(db, caller, request_id, threshold_id, entity="threshold", method="DeleteThreshold",
                             get=store.get, delete=store.delete, view=ThresholdView.from_row,
                             from_snapshot=ThresholdView.from_snapshot)

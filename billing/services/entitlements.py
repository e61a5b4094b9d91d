"""CheckEntitlement and ListEntitlements: a subscription's plan features judged by the pure
rule (`domain/entitlements.decide`) against its status and the current period's live usage
(docs/entitlements.md)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing.domain.aggregation import PeriodUsage, charge_quantity
from billing.domain.entitlements import ENTITLED_STATUSES, Decision, Feature, FeatureKind, decide, change_data
from billing.domain.events import EventType
from billing.domain.plans import PlanSpec
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.subscriptions import Subscription
from billing.services import event_usage, events, paging, period_reads, plans
from billing.services.context import Caller
from billing.services.errors import NotFound, ValidationError, Violations
from billing.services.plans import PlanCache
from billing.services.uow import Database
from billing.store import entitlement_reads
from billing.store import subscriptions as subs_store


@dataclass(frozen=True)
class EntitlementView:
    feature_code: str
    feature: Feature | None  # None: the plan does not list it
    decision: Decision
    period_start: datetime | None = None  # metered and entitled: the period `used` counts
    period_end: datetime | None = None


async def check(db: Database, caller: Caller, cache: PlanCache, *, subscription_id: str,
                feature_code: str) -> EntitlementView:
    sub_uuid = paging.parse_uuid(subscription_id, "subscription_id")
    if feature_code == "":
        raise ValidationError("feature_code", "is required")
    if len(feature_code) > 64:
        raise ValidationError("feature_code", "must be at most 64 characters")
    found = await _check_in_one_statement(db, caller, cache, sub_uuid, subscription_id, feature_code)
    if found is not None:
        return found
    async with db.tenant_tx(caller.tenant_id) as conn:
        sub, spec = await _subscription(conn, caller, cache, sub_uuid, subscription_id)
        feature = next((f for f in spec.features if f.code == feature_code), None)
        return (await _judge(conn, caller, sub, spec, [feature_code], [feature]))[0]


async def _check_in_one_statement(db: Database, caller: Caller, cache: PlanCache, sub_uuid: uuid.UUID,
                                  subscription_id: str, feature_code: str) -> EntitlementView | None:
    """The usual check in one round trip (`store/entitlement_reads.py`): the subscription and
    its period's stored totals. None when that is not enough to answer as `_judge` would: the
    plan is not in the cache yet, or the feature's metric is counted from the events (a
    unique count, a dynamic or per-event price, a weighted sum); the caller then reads in a
    transaction. The totals are read only if a cached plan of the tenant meters the feature."""
    with_usage = cache.metered_somewhere(caller.tenant_id, feature_code)
    async with db.tenant_statement(caller.tenant_id) as (conn, entry):
        rows = await entitlement_reads.read(conn, caller.tenant_id, entry.key_hashes, entry.token, sub_uuid,
                                            with_usage)
    if not rows:
        raise NotFound("subscription", subscription_id)
    first = rows[0]
    try:
        spec = cache.spec(caller.tenant_id, first["plan_id"])
    except KeyError:
        return None
    feature = next((f for f in spec.features if f.code == feature_code), None)
    status = SubscriptionStatus(first["status"])
    start = first["current_period_start"]
    metered = feature is not None and feature.kind is FeatureKind.METERED
    quantity = None
    if feature is not None and metered and status in ENTITLED_STATUSES and start is not None:
        charges = [c for c in spec.usage_charges if c.metric_code == feature.metric_code]
        if not with_usage or any(c.unique_property or event_usage.from_events(c) for c in charges):
            return None  # not with_usage: the plan came into the cache during the read
        totals = {r["metric_code"]: r for r in rows}
        for charge in charges:  # the last charge of the metric counts, as in `_judge`
            row = totals.get(charge.metric_code)
            usage = PeriodUsage() if row is None else PeriodUsage(row["quantity_sum"], row["event_count"],
                                                                  row["quantity_max"], row["latest_quantity"])
            quantity = charge_quantity(charge, usage)
    decision = decide(feature, status, quantity)
    counted = metered and decision.used is not None
    return EntitlementView(feature_code, feature, decision, start if counted else None,
                           first["current_period_end"] if counted else None)


async def list_entitlements(db: Database, caller: Caller, cache: PlanCache, *, subscription_id: str,
                            page_size: int = 0, page_token: str = "") -> list[EntitlementView]:
    """Every feature of the plan, in one page: a plan has at most 50 (`MAX_FEATURES`)."""
    v = Violations()
    sub_uuid = v.check(paging.parse_uuid, subscription_id, "subscription_id")
    v.check(paging.page_size, page_size)
    if page_token:
        v.items.append(("page_token", "must be empty: the first page holds every entitlement"))
    v.raise_if_any()
    assert sub_uuid is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        sub, spec = await _subscription(conn, caller, cache, sub_uuid, subscription_id)
        features: list[Feature | None] = list(spec.features)
        return await _judge(conn, caller, sub, spec, [f.code for f in spec.features], features)


async def _subscription(conn: asyncpg.Connection, caller: Caller, cache: PlanCache, sub_uuid: uuid.UUID,
                        subscription_id: str) -> tuple[Subscription, PlanSpec]:
    sub = await subs_store.get(conn, caller.tenant_id, sub_uuid)
    if sub is None:
        raise NotFound("subscription", subscription_id)
    await cache.load(conn, caller.tenant_id, {sub.plan_id})
    return sub, cache.spec(caller.tenant_id, sub.plan_id)


async def _judge(conn: asyncpg.Connection, caller: Caller, sub: Subscription, spec: PlanSpec, codes: list[str],
                 features: list[Feature | None]) -> list[EntitlementView]:
    """Reads usage only for the metered features of an entitled subscription, and only
    their metrics (the plan restricted to those charges): a check of one feature reads one
    metric's totals."""
    metered = {f.metric_code for f in features if f is not None and f.kind is FeatureKind.METERED}
    start = sub.current_period_start
    used: dict[str, Decimal] = {}
    if metered and sub.status in ENTITLED_STATUSES and start is not None:
        charges = tuple(c for c in spec.usage_charges if c.metric_code in metered)
        usage, _ = await period_reads.usage_of_period(conn, caller.tenant_id, sub.id,
                                                      replace(spec, usage_charges=charges), start)
        used = {c.metric_code: charge_quantity(c, usage.get(c.metric_code, PeriodUsage())) for c in charges}
    out = []
    for code, feature in zip(codes, features):
        is_metered = feature is not None and feature.kind is FeatureKind.METERED
        quantity = used.get(feature.metric_code or "") if feature is not None and is_metered else None
        decision = decide(feature, sub.status, quantity)
        counted = is_metered and decision.used is not None
        out.append(EntitlementView(code, feature, decision, start if counted else None,
                                   sub.current_period_end if counted else None))
    return out


async def emit_if_changed(conn: asyncpg.Connection, caller: Caller, request_id: str, before: Subscription | None,
                          after: Subscription, cause_event: str, occurred_at: datetime) -> None:
    """`entitlements.changed`, in the change's transaction, when a lifecycle change changes
    what the subscription may use (`domain/entitlements.change_data`): an activation, a
    pause, a resume, a cancel taking effect, a plan change taking effect now, of a plan with
    features (those taking effect in a billing run: `period_writes`). Same cause as the
    change's own event, another type: its own deterministic id."""
    if before is not None and (before.status, before.plan_id) == (after.status, after.plan_id):
        return  # nothing an entitlement depends on changed: no plan read
    plan_ids = {after.plan_id} | ({before.plan_id} if before else set())
    features = {}
    for plan_id in plan_ids:
        plan = await plans.load(conn, caller.tenant_id, plan_id)
        features[plan_id] = plan.spec.features if plan is not None else ()
    data = change_data((before.status, before.plan_id, features[before.plan_id]) if before else None,
                       (after.status, after.plan_id, features[after.plan_id]), cause_event)
    if data is None:
        return
    await events.emit(conn, caller, event_type=EventType.ENTITLEMENTS_CHANGED, subscription_id=str(after.id),
                      customer_id=after.customer_id, occurred_at=occurred_at, cause=request_id,
                      from_status=before.status.value if before else None, to_status=after.status.value, data=data)

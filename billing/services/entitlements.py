"""CheckEntitlement and ListEntitlements: a subscription's plan features judged by the pure
rule (`domain/entitlements.decide`) against its status and the current period's live usage
(docs/entitlements.md)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from billing.domain.aggregation import Gauge, PeriodUsage
from billing.domain.entitlements import (ENTITLED_STATUSES, Decision, EventCounts, Feature, FeatureKind, change_data,
                                         counting_charge, decide, event_counts, metered_used)
from billing.domain.events import EventType
from billing.domain.plans import PlanSpec
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.subscriptions import Subscription
from billing.services import entitlement_groups, events, paging, period_reads, plans
from billing.services.context import Caller
from billing.services.errors import NotFound, ValidationError, Violations
from billing.services.entitlement_groups import CheckGroups
from billing.services.plans import PlanCache
from billing.services.uow import Database
from billing.store import subscriptions as subs_store


@dataclass(frozen=True)
class EntitlementView:
    feature_code: str
    feature: Feature | None  # None: the plan does not list it
    decision: Decision
    period_start: datetime | None = None  # metered and entitled: the period `used` counts
    period_end: datetime | None = None


async def check(db: Database, caller: Caller, cache: PlanCache, *, subscription_id: str,
                feature_code: str, groups: CheckGroups | None = None) -> EntitlementView:
    """One statement (`store/entitlement_reads.py`), whatever the plan and the metric: the
    subscription, its period's totals when a cached plan of the tenant meters the feature,
    the event counts those plans need for it, and the plan's spec when it is not cached. A
    second statement only in the rare case that a plan just cached counts the feature from
    events no cached plan did (the first check of that plan in the process). With `groups`,
    the statement is shared with the tenant's concurrent checks (`entitlement_groups`)."""
    sub_uuid = paging.parse_uuid(subscription_id, "subscription_id")
    if feature_code == "":
        raise ValidationError("feature_code", "is required")
    if len(feature_code) > 64:
        raise ValidationError("feature_code", "must be at most 64 characters")
    found = None
    while found is None:  # each None cached a plan new to the process: the next asks what it needs
        found = await _check_in_one_statement(db, caller, cache, sub_uuid, subscription_id, feature_code, groups)
    return found


async def _check_in_one_statement(db: Database, caller: Caller, cache: PlanCache, sub_uuid: uuid.UUID,
                                  subscription_id: str, feature_code: str,
                                  groups: CheckGroups | None = None) -> EntitlementView | None:
    """None when the statement did not ask for an event count the answer needs: the plan was
    not cached and counts the feature from the events as no cached plan of the tenant does
    (it is cached on return, so the next statement asks)."""
    tenant = caller.tenant_id
    if groups is not None:
        rows = await groups.rows(db, cache, tenant, sub_uuid, feature_code)
    else:
        rows = (await entitlement_groups.read(db, cache, tenant, [(sub_uuid, feature_code)])).get(sub_uuid, [])
    if not rows:
        raise NotFound("subscription", subscription_id)
    first = rows[0]
    plan_id = first["plan_id"]
    raw = first["spec"]
    spec = cache.spec(tenant, plan_id) if raw is None else cache.put(tenant, plan_id, raw)
    feature = cache.feature(tenant, plan_id, feature_code)
    status = SubscriptionStatus(first["status"])
    start, end = first["current_period_start"], first["current_period_end"]
    metered = feature is not None and feature.kind is FeatureKind.METERED
    quantity = None
    if metered and status in ENTITLED_STATUSES and start is not None:
        assert feature is not None
        charge = counting_charge(spec, feature)
        usage: dict[str, PeriodUsage] = {}
        if charge is not None:
            found = _metric_usage(rows, charge.metric_code, event_counts(charge))
            if found is None:
                return None
            usage[charge.metric_code] = found
        quantity = metered_used(spec, feature, usage, start, end)
    decision = decide(feature, status, quantity)
    counted = metered and decision.used is not None
    return EntitlementView(feature_code, feature, decision, start if counted else None, end if counted else None)


def _metric_usage(rows: list, metric: str, counts: EventCounts) -> PeriodUsage | None:
    """The statement's rows of one metric as the period's usage the counting charge needs
    (None: an event count it needs was not asked for)."""
    totals = unique = gauge = None
    for r in rows:
        if r["metric_code"] != metric:
            continue
        if r["gauge_level"] is not None:
            gauge = Gauge(r["gauge_level"], tuple(zip(r["gauge_at_us"], r["gauge_quantities"])))
        elif r["unique_property"] is not None:
            if r["unique_property"] == counts.unique_property:
                unique = r["unique_count"]
        else:
            totals = r
    if (counts.gauge and gauge is None) or (counts.unique_property is not None and unique is None):
        return None
    if totals is None:
        return PeriodUsage(unique_count=unique, gauge=gauge)
    return PeriodUsage(totals["quantity_sum"], totals["event_count"], totals["quantity_max"],
                       totals["latest_quantity"], unique, gauge=gauge)


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
    their metrics (the plan restricted to those charges)."""
    metered = {f.metric_code for f in features if f is not None and f.kind is FeatureKind.METERED}
    start = sub.current_period_start
    usage: dict[str, PeriodUsage] | None = None
    if metered and sub.status in ENTITLED_STATUSES and start is not None:
        charges = tuple(c for c in spec.usage_charges if c.metric_code in metered)
        usage, _ = await period_reads.usage_of_period(conn, caller.tenant_id, sub.id,
                                                      replace(spec, usage_charges=charges), start)
    out = []
    for code, feature in zip(codes, features):
        is_metered = feature is not None and feature.kind is FeatureKind.METERED
        quantity = None
        if feature is not None and is_metered and usage is not None and start is not None:
            quantity = metered_used(spec, feature, usage, start, sub.current_period_end)
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

"""Plans: create, read, list, archive, and the one loader of plan specs (`load`, `PlanCache`).

A plan's pricing never changes once created, so a spec read once can be kept for the life
of the process; its status (active, archived) does change and is always read afresh.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import asyncpg

from billing.domain.entitlements import EventCounts, Feature, FeatureKind, counting_charge, event_counts
from billing.domain.plans import PlanInput, PlanSpec
from billing.domain.plan_storage import plan_from_dict, plan_to_dict
from billing.domain.plan_validation import parse_plan
from billing.services import audit, idempotency, paging
from billing.services.context import Caller
from billing.services.errors import AlreadyExists, NotFound, Violations
from billing.store import plans as plans_store
from billing.store.db import Database


@dataclass(frozen=True)
class Plan:
    id: uuid.UUID
    version: int
    spec: PlanSpec
    status: str
    created_at: datetime
    archived_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "Plan":
        return cls(row["id"], row["version"], plan_from_dict(row["spec"]), row["status"], row["created_at"],
                   row["archived_at"])

    def snapshot(self) -> dict:
        """The JSON form kept in the audit trail and as an idempotent request's outcome."""
        return {
            "id": str(self.id), "version": self.version, "spec": plan_to_dict(self.spec), "status": self.status,
            "created_at": self.created_at.isoformat(),
            "archived_at": self.archived_at.isoformat() if self.archived_at else None,
        }

    @classmethod
    def from_snapshot(cls, d: dict) -> "Plan":
        return cls(uuid.UUID(d["id"]), d["version"], plan_from_dict(d["spec"]), d["status"],
                   datetime.fromisoformat(d["created_at"]),
                   datetime.fromisoformat(d["archived_at"]) if d["archived_at"] else None)


async def load(conn: asyncpg.Connection, tenant_id: uuid.UUID, plan_id: uuid.UUID, *,
               for_update: bool = False) -> Plan | None:
    """One plan with its current status, or None."""
    row = await plans_store.get(conn, tenant_id, plan_id, for_update=for_update)
    return Plan.from_row(row) if row is not None else None


class PlanCache:
    """Plan specs by (tenant, plan id), loaded on first use and kept: specs are immutable.

    Built once per process (billing/bootstrap.py) and shared by RecordUsage, GetUsage,
    CheckEntitlement and the usage consumer.
    """

    def __init__(self) -> None:
        self._specs: dict[tuple[uuid.UUID, uuid.UUID], PlanSpec] = {}
        self._metrics: dict[tuple[uuid.UUID, uuid.UUID], frozenset[str]] = {}
        self._features: dict[tuple[uuid.UUID, uuid.UUID], dict[str, Feature]] = {}
        self._plan_ids: dict[uuid.UUID, tuple[uuid.UUID, ...]] = {}  # tenant -> its cached plans
        self._metered: dict[uuid.UUID, dict[str, EventReads]] = {}  # tenant -> feature metered in a cached plan

    async def load(self, conn: asyncpg.Connection, tenant: uuid.UUID, plan_ids: set[uuid.UUID]) -> None:
        """Make `spec` and `metric_codes` answer for these plans (one query for the missing)."""
        missing = [p for p in plan_ids if (tenant, p) not in self._specs]
        for plan_id, raw in await plans_store.specs(conn, tenant, missing):
            self.put(tenant, plan_id, raw)

    def put(self, tenant: uuid.UUID, plan_id: uuid.UUID, raw: dict) -> PlanSpec:
        """A plan's stored spec (`plans.spec`), read by the caller, into the cache."""
        found = self._specs.get((tenant, plan_id))
        if found is not None:
            return found
        spec = plan_from_dict(raw)
        self._specs[(tenant, plan_id)] = spec
        self._metrics[(tenant, plan_id)] = frozenset(c.metric_code for c in spec.usage_charges)
        self._features[(tenant, plan_id)] = {f.code: f for f in spec.features}
        self._plan_ids[tenant] = self._plan_ids.get(tenant, ()) + (plan_id,)
        metered = self._metered.setdefault(tenant, {})
        for feature in spec.features:
            if feature.kind is FeatureKind.METERED:
                charge = counting_charge(spec, feature)
                reads = metered.get(feature.code) or EventReads()
                metered[feature.code] = reads.adding(event_counts(charge) if charge else EventCounts(),
                                                     feature.metric_code or "")
        return spec

    def spec(self, tenant: uuid.UUID, plan_id: uuid.UUID) -> PlanSpec:
        return self._specs[(tenant, plan_id)]

    def feature(self, tenant: uuid.UUID, plan_id: uuid.UUID, code: str) -> Feature | None:
        """The cached plan's feature of this code (None: the plan does not list it)."""
        return self._features[(tenant, plan_id)].get(code)

    def metric_codes(self, tenant: uuid.UUID, plan_id: uuid.UUID) -> frozenset[str]:
        return self._metrics[(tenant, plan_id)]

    def plan_ids(self, tenant: uuid.UUID) -> tuple[uuid.UUID, ...]:
        """The tenant's cached plans, in the order they came in."""
        return self._plan_ids.get(tenant, ())

    def metered_somewhere(self, tenant: uuid.UUID, feature_code: str) -> EventReads | None:
        """What a check of this feature reads, when a cached plan of the tenant lists it as
        metered (None: none does): the usage totals, and what any of those plans counts
        from the events for it."""
        found = self._metered.get(tenant)
        return found.get(feature_code) if found is not None else None


@dataclass(frozen=True)
class EventReads:
    """The event counts a feature's check asks of `entitlement_check` (migration 040): the
    (metric, property) pairs of unique counts and the weighted_sum metrics, as the lists
    the statement takes."""

    unique_metrics: tuple[str, ...] = ()
    unique_properties: tuple[str, ...] = ()
    gauge_metrics: tuple[str, ...] = ()

    def adding(self, counts: EventCounts, metric: str) -> "EventReads":
        uniques = list(zip(self.unique_metrics, self.unique_properties))
        if counts.unique_property is not None and (metric, counts.unique_property) not in uniques:
            return EventReads(self.unique_metrics + (metric,), self.unique_properties + (counts.unique_property,),
                              self.gauge_metrics)
        if counts.gauge and metric not in self.gauge_metrics:
            return EventReads(self.unique_metrics, self.unique_properties, self.gauge_metrics + (metric,))
        return self


@dataclass(frozen=True)
class PlanPage:
    plans: list[Plan]
    next_page_token: str


async def create_plan(db: Database, caller: Caller, request_id: str, draft: PlanInput,
                      refused: Sequence[tuple[str, str]] = ()) -> Plan:
    """`refused`: violations the caller found already (enum numbers the API does not know,
    their fields left empty in `draft`), reported with every other one, in their place."""
    v = Violations()
    v.check(idempotency.check_key, request_id)
    spec = v.check(parse_plan, draft)
    if refused:
        given = dict(refused)
        v.items = [(f, given.pop(f, m)) for f, m in v.items] + list(given.items())
    v.raise_if_any()
    assert spec is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "CreatePlan", plan_to_dict(spec))
        if replay is not None:
            return Plan.from_snapshot(replay)
        row = await plans_store.insert(conn, caller.tenant_id, uuid.uuid4(), spec.code, plan_to_dict(spec))
        if row is None:
            raise AlreadyExists(f"a plan with code {spec.code!r} already exists (plan codes are never reused)",
                                reason="PLAN_CODE_TAKEN")
        plan = Plan.from_row(row)
        await audit.record_change(conn, caller, entity_type="plan", entity_id=plan.id, action="plan.created",
                                  before=None, after=plan.snapshot(), request_id=request_id)
        await idempotency.remember(conn, caller, request_id, plan.snapshot())
        return plan


async def get_plan(db: Database, caller: Caller, plan_id: str) -> Plan:
    ident = paging.parse_uuid(plan_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        plan = await load(conn, caller.tenant_id, ident)
    if plan is None:
        raise NotFound("plan", plan_id)
    return plan


async def list_plans(db: Database, caller: Caller, *, tokens: paging.PageTokens, page_size: int, page_token: str,
                     include_archived: bool, code: str) -> PlanPage:
    limit = paging.page_size(page_size)
    code = paging.filter_text(code, "code")
    filters = {"include_archived": include_archived, "code": code}
    after = tokens.decode(page_token, "ListPlans", caller.tenant_id, filters)
    async with db.tenant_tx(caller.tenant_id) as conn:
        rows = await plans_store.list_page(conn, caller.tenant_id, include_archived=include_archived,
                                           code=code or None, after=after, limit=limit + 1)
    plans = [Plan.from_row(r) for r in rows[:limit]]
    token = tokens.encode("ListPlans", caller.tenant_id, filters, plans[-1].created_at, plans[-1].id) \
        if len(rows) > limit else ""
    return PlanPage(plans, token)


async def archive_plan(db: Database, caller: Caller, request_id: str, plan_id: str) -> Plan:
    """Archived plans take no new subscriptions; existing ones keep billing. Idempotent."""
    idempotency.check_key(request_id)
    ident = paging.parse_uuid(plan_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "ArchivePlan", {"id": str(ident)})
        if replay is not None:
            return Plan.from_snapshot(replay)
        before = await load(conn, caller.tenant_id, ident, for_update=True)
        if before is None:
            raise NotFound("plan", plan_id)
        if before.status == "archived":
            plan = before
        else:
            plan = Plan.from_row(await plans_store.archive(conn, caller.tenant_id, ident))
            await audit.record_change(conn, caller, entity_type="plan", entity_id=plan.id, action="plan.archived",
                                      before=before.snapshot(), after=plan.snapshot(), request_id=request_id)
        await idempotency.remember(conn, caller, request_id, plan.snapshot())
        return plan

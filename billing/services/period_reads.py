"""The bulk reads of a chunk of period closes: everything the pure computation needs, for
every subscription of the chunk, in a fixed number of round trips (docs/billing.md)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Iterable, Mapping, Sequence

import asyncpg

from billing.domain.invoice_assembly import Discount
from billing.domain.credits import CreditBook
from billing.domain.late_usage import LateUsage, late_usage_line
from billing.domain.plans import Aggregation, BillingTiming, PlanSpec, PricingModel
from billing.domain.plan_storage import plan_from_dict
from billing.domain.pricing import Line, PeriodUsage, period_usage
from billing.domain.subscriptions import Subscription
from billing.services import discounts as discount_reads, event_usage
from billing.store import billed_periods, credits as credit_store, pending_lines, period_usage as usage_reads
from billing.store import plans as plans_store
from billing.store import progressive as progressive_store
from billing.store import usage as usage_store

# (subscription id, period start) -> metric code -> the period's totals (start None: what a
# period without totals of its own prices, see services/event_usage.py)
UsageByPeriod = event_usage.UsageByPeriod
# subscription id -> [(late event ids, the late_usage line billing them)]
LateLines = dict[uuid.UUID, list[tuple[list[str], Line]]]


@dataclass
class ChunkInputs:
    """What the closes of one chunk read: usage of every period to close, whether the
    current period was charged in advance, late usage lines, pending lines, discounts and the
    open credit grants (locked: the chunk's transaction burns them)."""

    usage: UsageByPeriod
    charged: set[uuid.UUID]
    late: LateLines
    pending: dict[uuid.UUID, list[tuple[uuid.UUID, Line]]]
    discounts: dict[uuid.UUID, list[Discount]] = field(default_factory=dict)
    credits: CreditBook = field(default_factory=CreditBook)
    # (subscription, period start) -> what its threshold invoices charged (docs/billing.md)
    progressive: dict[tuple[uuid.UUID, datetime], Decimal] = field(default_factory=dict)


async def read_chunk(conn: asyncpg.Connection, tenant: uuid.UUID, plans: dict[uuid.UUID, PlanSpec],
                     subs: list[Subscription], as_of: datetime, *, lock: bool = True) -> ChunkInputs:
    """Plans (into the `plans` cache), "opened by a run", usage totals of every period to
    close, unique counts, late usage, pending lines, discounts and credit grants of `subs`
    (the grants locked, unless `lock` is false: a read-only preview)."""
    ids = [s.id for s in subs]
    firsts: list[tuple[uuid.UUID, datetime]] = []
    for s in subs:
        assert s.current_period_start is not None  # a due subscription has a period
        firsts.append((s.id, s.current_period_start))
    late_rows = await usage_reads.unbilled_late_usage(conn, tenant, ids)
    plan_ids = {s.plan_id for s in subs} | {s.pending_plan_id for s in subs if s.pending_plan_id}
    await load_plans(conn, tenant, plans, plan_ids | {r["plan_id"] for r in late_rows if r["plan_id"]})
    # "Opened (and charged in advance) by a run" matters only to a period whose plan charges
    # its fee in advance: asked for those alone, not for a chunk of in-arrears plans.
    in_advance = [p for p, s in zip(firsts, subs) if _fee_in_advance(plans[s.plan_id])]
    charged = await billed_periods.opened_by_a_run(conn, tenant, in_advance) if in_advance else set()
    # Totals of the metrics the plans charge: a metric no charge prices changes no line.
    metrics = sorted({c.metric_code for p in plan_ids if p in plans for c in plans[p].usage_charges})
    usage = _usage_by_period(firsts, await usage_reads.usage_totals_from(
        conn, tenant, firsts, as_of, _totals_charged(plans, plan_ids), metrics=metrics))
    await _add_unique_counts(conn, tenant, plans, subs, firsts, as_of, usage)
    await event_usage.add_event_usage(conn, tenant, [(s.id, plans[p]) for s in subs for p in (s.plan_id, s.pending_plan_id)
                                                     if p], dict(firsts), as_of, usage)
    late = await late_lines(conn, tenant, plans, subs, late_rows)
    pending = await pending_lines.unbilled(conn, tenant, ids)
    discounts = await discount_reads.live_for(conn, tenant, ids)
    grants = await credit_store.open_grants(conn, tenant, ids, sorted({s.customer_id for s in subs}), lock=lock)
    progressive = await progressive_store.billed_from(conn, tenant, firsts)
    return ChunkInputs(usage, charged, late, pending, discounts, CreditBook(grants), progressive)


async def load_plans(conn, tenant: uuid.UUID, plans: dict[uuid.UUID, PlanSpec], wanted: set[uuid.UUID]) -> None:
    missing = [p for p in wanted if p not in plans]
    for plan_id, spec in await plans_store.specs(conn, tenant, missing):
        plans[plan_id] = plan_from_dict(spec)  # plans never change once created


def _usage_by_period(firsts: list[tuple[uuid.UUID, datetime]], rows) -> UsageByPeriod:
    """The rows of `usage_totals_from(firsts, ...)` by (subscription, period start)."""
    out: UsageByPeriod = {}
    for n, start, metric, total, count, most, latest in rows:
        sub_id, first = firsts[n - 1]
        out.setdefault((sub_id, start or first), {})[metric] = period_usage(total, count, most, latest)
    return out


# The usage total each aggregation prices (unique_count is counted from the events).
_TOTAL_OF = {Aggregation.SUM: "quantity_sum", Aggregation.COUNT: "event_count", Aggregation.MAX: "quantity_max",
             Aggregation.LATEST: "latest_quantity"}


def _fee_in_advance(spec: PlanSpec) -> bool:
    return spec.billing_timing is BillingTiming.IN_ADVANCE and bool(spec.base_fee)


def _totals_charged(plans: dict[uuid.UUID, PlanSpec], plan_ids: set[uuid.UUID]) -> set[str]:
    """The usage totals these plans price on."""
    wanted = {_TOTAL_OF[c.aggregation] for p in plan_ids if p in plans for c in plans[p].usage_charges
              if c.aggregation in _TOTAL_OF}
    if any(c.pricing_model in (PricingModel.PERCENTAGE, PricingModel.DYNAMIC)
           for p in plan_ids if p in plans for c in plans[p].usage_charges):
        wanted.add("event_count")  # fixed fees per event; a dynamic line's event count
    return wanted


async def _add_unique_counts(conn, tenant: uuid.UUID, plans: dict[uuid.UUID, PlanSpec], subs: list[Subscription],
                             firsts: list, as_of: datetime, usage: UsageByPeriod) -> None:
    """unique_count charges are counted from the raw events: one query per (metric,
    property) that a plan of the chunk charges, for the subscriptions on such a plan."""
    wanted: dict[tuple[str, str], set[uuid.UUID]] = {}
    for sub in subs:
        for plan_id in (sub.plan_id, sub.pending_plan_id):
            spec = plans.get(plan_id) if plan_id else None
            for charge in spec.usage_charges if spec else ():
                if charge.unique_property:
                    wanted.setdefault((charge.metric_code, charge.unique_property), set()).add(sub.id)
    for (metric, prop), sub_ids in wanted.items():
        periods = [p for p in firsts if p[0] in sub_ids]
        for r in await usage_reads.unique_counts(conn, tenant, metric, prop, periods, as_of):
            _set_unique(usage.setdefault((r["subscription_id"], r["period_start"]), {}), metric, r["n"])
        for p in periods:  # counted: no event with the property is 0, not unknown
            by_metric = usage.setdefault(p, {})
            if metric not in by_metric or by_metric[metric].unique_count is None:
                _set_unique(by_metric, metric, 0)


def _set_unique(by_metric: dict[str, PeriodUsage], metric: str, count: int) -> None:
    prev = by_metric.get(metric, PeriodUsage())
    by_metric[metric] = PeriodUsage(prev.quantity_sum, prev.event_count, prev.quantity_max, prev.latest_quantity,
                                    count)


async def late_lines(conn, tenant: uuid.UUID, plans: dict[uuid.UUID, PlanSpec], subs: list[Subscription],
                     rows) -> LateLines:
    """Per subscription: (late event ids, the late_usage line billing them), priced by the
    plan of their original period (docs/billing.md, billing/domain/late_usage.py)."""
    by_id = {s.id: s for s in subs}
    out: LateLines = {}
    for r in rows:
        sub = by_id[r["subscription_id"]]
        spec = plans[r["plan_id"] or sub.plan_id]
        charge = next((c for c in spec.usage_charges if c.metric_code == r["metric_code"]), None)
        before = PeriodUsage(r["b_sum"], r["b_count"], r["b_max"], r["b_latest"])
        after = PeriodUsage(r["a_sum"], r["a_count"], r["a_max"], r["a_latest"])
        if charge is not None and charge.unique_property:
            b, a = await usage_reads.late_unique_counts(conn, tenant, sub.id, r["metric_code"], r["period_start"],
                                                        charge.unique_property, list(r["event_ids"]))
            before, after = replace(before, unique_count=b), replace(after, unique_count=a)
        if charge is not None:
            before, after = await event_usage.late_event_usage(conn, tenant, sub.id, charge,
                                                               (r["period_start"], r["period_end"]),
                                                               list(r["event_ids"]), before, after)
        start = r["billed_start"] or r["period_start"]
        end = r["billed_end"] or r["period_end"]
        late = LateUsage(r["metric_code"], start, end, len(r["event_ids"]), before, after)
        out.setdefault(sub.id, []).append(
            (list(r["event_ids"]), late_usage_line(late, spec, trial=bool(r["trial"]))))
    return out


async def usage_of_period(conn: asyncpg.Connection, tenant: uuid.UUID, sub_id: uuid.UUID, spec: PlanSpec,
                          start: datetime) -> tuple[dict[str, PeriodUsage], datetime | None]:
    """One period's totals by metric of `spec`'s charges, unique counts included: what
    `pricing.price_usage` prices for an immediate cancel's final usage and GetUsage's
    preview. Also the period's end as stored with its totals (None: no usage yet)."""
    totals = await usage_store.totals(conn, tenant, sub_id, start)
    uniques = [await usage_store.unique_count(conn, tenant, sub_id, charge.metric_code, start, charge.unique_property)
               if charge.unique_property else None for charge in spec.usage_charges]
    usage, end = usage_from_totals(spec, totals, uniques)
    await event_usage.add_period_event_usage(conn, tenant, sub_id, spec, start, usage)
    return usage, end


def usage_from_totals(spec: PlanSpec, totals: Iterable[Mapping], uniques: Sequence[int | None] | None = None,
                      ) -> tuple[dict[str, PeriodUsage], datetime | None]:
    """The period's usage by metric from its stored totals (rows of store/usage.totals) and
    the unique counts of `spec.usage_charges` (in their order; None: no unique count). The
    usage of event-priced charges is not in it (`event_usage.add_period_event_usage`)."""
    rows = {r["metric_code"]: r for r in totals}
    usage: dict[str, PeriodUsage] = {}
    end = None
    for i, charge in enumerate(spec.usage_charges):
        row = rows.get(charge.metric_code)
        unique = uniques[i] if uniques else None
        if row is None:
            usage[charge.metric_code] = PeriodUsage(unique_count=unique)
            continue
        end = end or row["period_end"]
        usage[charge.metric_code] = PeriodUsage(row["quantity_sum"], row["event_count"], row["quantity_max"],
                                                row["latest_quantity"], unique)
    return usage, end

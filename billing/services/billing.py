"""Billing runs: request one (RunBilling), read them, and execute one (the billing consumer).

RunBilling records the run (pending) and writes one BillingRunRequest per shard to the
outbox, in one transaction; the same idempotency key returns the same run. The billing
consumer calls `execute_run` per shard, which bills every due subscription of the shard in
set-based chunks (docs/billing.md):

* a chunk is up to CHUNK_SIZE due subscriptions, locked FOR UPDATE SKIP LOCKED, and ONE
  transaction with a constant number of round trips: bulk reads (usage totals, plans,
  late usage, pending lines ...), every closed period computed in the pure domain, then
  bulk writes (billed_periods ON CONFLICT DO NOTHING RETURNING, outbox rows, subscription
  advances, audit rows, late usage and pending lines marked billed), then the counters;
* a subscription whose computation raises is left out before anything is written,
  recorded with its reason and not tried again by this run; the others go on;
* a subscription is billed period after period until its period ends after as_of; late
  usage and pending lines go into the first period closed.
* when the shard has nothing due left, the transaction that completes it bills the late
  usage of the shard's canceled subscriptions (they close no period again), one invoice
  request each (`_bill_canceled_late_usage`).

Safe to repeat: a crash loses at most the uncommitted chunks, and executing the shard
again (the consumer redelivers the request) continues with what is still due. Two
executions at once, of one run or of two runs, split the subscriptions between them (SKIP
LOCKED), and billed_periods refuses a period billed twice whatever happens. The run is
completed by the execution that completes its last shard.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import NamedTuple, Sequence

import asyncpg

from billing import codec
from billing.domain import invoicing
from billing.domain.invoicing import ClosedPeriod, PeriodUsage
from billing.domain.late_usage import LateUsage, late_usage_line
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import decimal_to_str
from billing.domain.periods import to_us
from billing.domain.plans import Aggregation, BillingTiming, PlanSpec, plan_from_dict
from billing.domain.pricing import Line
from billing.domain.subscriptions import Subscription
from billing.ops import metrics
from billing.services import audit, events, idempotency, invoice_requests, paging
from billing.services.context import Caller
from billing.services.errors import FailedPrecondition, NotFound, ValidationError
from billing.store import audit as audit_store
from billing.store import billing as store
from billing.store import outbox, pending_lines
from billing.store import usage as usage_store
from billing.store.db import Database

log = logging.getLogger(__name__)

RUNS_STREAM = "billing_runs"
INVOICES_STREAM = "invoice_requests"
STATUSES = ("pending", "running", "completed", "failed")
CHUNK_SIZE = 2000
# Chunks in flight at once in one execution (one connection each): Python computes one
# while PostgreSQL writes the other.
WORKERS = 2
# A chunk reads at most this many id windows when few subscriptions are due.
WINDOWS_PER_CHUNK = 8
# Shards a run is split into unless asked otherwise (BILLING_RUN_SHARDS).
DEFAULT_SHARDS = 1
MAX_SHARDS = 1024
# A run bills at most this many periods of one subscription (a daily plan a year behind
# is 366); more means something is wrong with the subscription: it fails alone.
MAX_PERIODS_PER_SUBSCRIPTION = 1000
# RunBilling's as_of may be at most this far ahead of our clock (client clock skew).
AS_OF_SKEW = timedelta(minutes=5)
# How long to wait before looking again when what is still due is locked by another execution.
BUSY_WAIT_S = 0.2

def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class BillingRun:
    id: uuid.UUID
    idempotency_key: str
    status: str
    as_of: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    subscriptions_due: int
    subscriptions_billed: int
    subscriptions_skipped: int
    subscriptions_failed: int
    failures: tuple[tuple[str, str], ...]  # (subscription id, reason)
    totals: tuple[tuple[str, str], ...]  # (currency, amount), by currency


@dataclass(frozen=True)
class BillingRunPage:
    runs: list[BillingRun]
    next_page_token: str


def _run(row: asyncpg.Record) -> BillingRun:
    return BillingRun(
        row["id"], row["idempotency_key"], row["status"], row["as_of"], row["created_at"], row["started_at"],
        row["finished_at"], row["subscriptions_due"], row["subscriptions_billed"], row["subscriptions_skipped"],
        row["subscriptions_failed"], tuple((f["subscription_id"], f["reason"]) for f in row["failures"]),
        tuple(sorted(row["totals"].items())),
    )


# -- RunBilling, GetBillingRun, ListBillingRuns ----------------------------------------

async def run_billing(db, caller: Caller, request_id: str, idempotency_key: str,
                      as_of: datetime | None, *, shards: int | None = None) -> BillingRun:
    """Record a run and request its execution: one run request per shard (`shards`, default
    DEFAULT_SHARDS), keyed "<run id>/<shard>" so that they spread over the partitions and
    the billing consumers of the group. The idempotency key (default: the request id)
    names the run: asking again with it returns that run, whatever its as_of."""
    shards = shards or DEFAULT_SHARDS
    if not 1 <= shards <= MAX_SHARDS:
        raise ValidationError("shards", f"must be between 1 and {MAX_SHARDS}")
    if request_id:  # optional here (the key may stand alone), but when given it must be a valid key
        idempotency.check_key(request_id)
    key = idempotency.check_key(idempotency_key or request_id, "idempotency_key")
    at = now()
    as_of = as_of or at
    if as_of > at + AS_OF_SKEW:
        raise ValidationError("as_of", "must not be in the future: a run bills periods that have ended")
    async with db.tenant_tx(caller.tenant_id) as conn:
        row = await store.insert_run(conn, caller.tenant_id, uuid.uuid4(), key, as_of)
        if row is None:
            return _run(await store.get_run_by_key(conn, caller.tenant_id, key))
        run = _run(row)
        if shards != 1:
            await store.set_shard_count(conn, caller.tenant_id, run.id, shards)
        content_type = codec.content_type(codec.Schema.BILLING_RUN_REQUEST)
        await outbox.enqueue_many(conn, caller.tenant_id, [
            (RUNS_STREAM, f"{run.id}/{shard}".encode(), codec.encode(codec.Schema.BILLING_RUN_REQUEST, {
                "run_id": str(run.id), "tenant_id": str(caller.tenant_id), "as_of_us": to_us(as_of),
                "shard": shard, "shard_count": shards, "requested_at_us": to_us(at)}),
             json.dumps({"content-type": content_type, "run-id": str(run.id), "shard": str(shard)}))
            for shard in range(shards)])
        await audit.record_change(conn, caller, entity_type="billing_run", entity_id=run.id,
                                  action="billing_run.requested", before=None,
                                  after={"idempotency_key": key, "as_of": as_of.isoformat()},
                                  request_id=request_id or key)
    metrics.BILLING_RUNS.labels("pending").inc()
    return run


async def get_billing_run(db, caller: Caller, run_id: str) -> BillingRun:
    run_uuid = paging.parse_uuid(run_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        row = await store.get_run(conn, caller.tenant_id, run_uuid)
    if row is None:
        raise NotFound("billing run", run_id)
    return _run(row)


async def list_billing_runs(db, caller: Caller, *, page_size: int, page_token: str, status: str,
                            created_after: datetime | None, created_before: datetime | None) -> BillingRunPage:
    limit = paging.page_size(page_size)
    after = paging.decode_token(page_token)
    if status and status not in STATUSES:
        raise ValidationError("status", f"unknown status {status!r}")
    if created_after and created_before and created_after >= created_before:
        raise ValidationError("created_before", "must be after created_after")
    async with db.tenant_tx(caller.tenant_id) as conn:
        rows = await store.list_runs(conn, caller.tenant_id, status=status or None, created_after=created_after,
                                     created_before=created_before, after=after, limit=limit + 1)
    runs = [_run(r) for r in rows[:limit]]
    token = paging.encode_token(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else ""
    return BillingRunPage(runs, token)


# -- executing a run --------------------------------------------------------------------

@dataclass
class _Chunk:
    due: int = 0
    billed: int = 0
    skipped: int = 0
    invoices: int = 0  # invoice requests written (a subscription may close several periods)
    # Of `totals`, what requests with a negative total (a credit larger than the charges)
    # added, as a positive amount: a Prometheus counter cannot go down (observe_invoices).
    credited: dict[str, Decimal] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    totals: dict[str, Decimal] = field(default_factory=dict)

    def add_invoice(self, currency: str, total: Decimal) -> None:
        """One invoice request written: its total into the run's totals (and the metrics')."""
        self.invoices += 1
        self.totals[currency] = self.totals.get(currency, _ZERO) + total
        if total < 0:
            self.credited[currency] = self.credited.get(currency, _ZERO) - total


@dataclass
class _Execution:
    """What the workers of one execution of one shard share."""

    tenant_id: uuid.UUID
    run_id: uuid.UUID
    as_of: datetime
    shard: int
    shard_count: int
    chunk_size: int
    failed: list[uuid.UUID]  # not tried again by this run (they would stay due)
    plans: dict[uuid.UUID, PlanSpec] = field(default_factory=dict)
    # The id windows of the pass still to hand out, by their last id (None: no upper bound,
    # the last one), and the end of the last window handed out; None: a pass starts.
    windows: deque[uuid.UUID | None] | None = None
    cursor: uuid.UUID | None = None
    fetching: asyncio.Lock = field(default_factory=asyncio.Lock)
    request_id: str = ""  # of the audit rows and events (default: the run id)


async def execute_run(pool, tenant_id: uuid.UUID, run_id: uuid.UUID, *, chunk_size: int = CHUNK_SIZE,
                      shard: int = 0, workers: int = WORKERS, executor: str = "") -> BillingRun | None:
    """Bill everything of one shard due as of the run's time; returns the run as this
    execution leaves it (None: no such run). The run is completed by whichever shard
    execution finishes last.

    `pool` is an asyncpg pool (or a Database): each chunk is a transaction of its own, so
    this must not run inside the caller's transaction. `workers` chunks are in flight at
    once, on as many connections, so that Python computes one chunk while PostgreSQL
    writes another. `executor` names the consumer (recorded on the shard row).
    """
    db = pool if isinstance(pool, Database) else Database(pool)
    async with db.tenant_tx(tenant_id) as conn:
        row = await store.get_run(conn, tenant_id, run_id, for_update=True)
        if row is None:
            log.warning("billing run not found", extra={"tenant_id": str(tenant_id), "run_id": str(run_id)})
            return None
        if row["status"] in ("completed", "failed"):
            return _run(row)  # a redelivered request: nothing left to do
        if not 0 <= shard < row["shard_count"]:
            log.error("billing run request for a shard the run does not have",
                      extra={"run_id": str(run_id), "shard": shard, "shard_count": row["shard_count"]})
            return _run(row)
        await store.mark_running(conn, tenant_id, run_id)
        if await store.start_shard(conn, tenant_id, run_id, shard, executor) == "completed":
            return _run(row)  # this shard is done; the others complete the run
    ex = _Execution(tenant_id, run_id, row["as_of"], shard, row["shard_count"], chunk_size,
                    [uuid.UUID(f["subscription_id"]) for f in row["failures"]])
    caller = Caller(tenant_id, f"billing-run:{run_id}")
    late: _Chunk | None = None
    while True:
        await asyncio.gather(*(_worker(db, caller, ex) for _ in range(max(1, workers))))
        async with db.tenant_tx(tenant_id) as conn:
            # Due rows locked by another execution (of this run or another) or skipped by the
            # keyset pass are not done yet: completing now would show a run whose counters
            # are still to come.
            if not await store.any_due(conn, tenant_id, ex.as_of, ex.failed, shard=shard,
                                       shard_count=ex.shard_count):
                # The shard's canceled subscriptions with late usage not billed yet: billed
                # here, in the transaction that completes the shard (nothing when none).
                late = await _bill_canceled_late_usage(conn, caller, ex)
                # Lock order everywhere: the run row, then the shard row (a chunk's progress
                # does the same; the other order deadlocks with a second execution).
                run = await store.get_run(conn, tenant_id, run_id, for_update=True)  # shards finish one by one
                await store.finish_shard(conn, tenant_id, run_id, shard)
                if run["status"] == "running" and \
                        await store.completed_shards(conn, tenant_id, run_id) >= run["shard_count"]:
                    await store.mark_finished(conn, tenant_id, run_id, "completed")
                    run = await store.get_run(conn, tenant_id, run_id)
                    _observe_finished(run)
                    log.info("billing run completed", extra={"tenant_id": str(tenant_id), "run_id": str(run_id)})
                break
        ex.windows = None  # another pass from the start: what was locked may be due still
        await asyncio.sleep(BUSY_WAIT_S)
    if late is not None:
        _observe_chunk(late)
    return _run(run)


async def _worker(db: Database, caller: Caller, ex: _Execution) -> None:
    """Bill chunk after chunk until a keyset pass over the shard finds nothing more."""
    while True:
        async with db.tenant_tx(ex.tenant_id) as conn:
            async with ex.fetching:  # hand out disjoint id windows, in order
                subs = await _next_chunk(conn, ex)
            if subs is None:
                return
            if not subs:
                continue
            chunk = await _bill_chunk(conn, caller, ex, subs)
            ex.failed += [uuid.UUID(f["subscription_id"]) for f in chunk.failures]
            await _add_progress(conn, ex, chunk)
        _observe_chunk(chunk)


async def _next_chunk(conn, ex: _Execution) -> list[Subscription] | None:
    """Up to about chunk_size due subscriptions of the shard, locked; None at the end of
    the pass. Reads id windows of the primary key (a shard holds 1/shard_count of each
    window) until the chunk is full or a few windows were read. The windows of a pass are
    found at its start, in one walk of the index (`store.window_ends`); the last one has no
    upper bound, so subscriptions created since are read too."""
    subs: list[Subscription] = []
    if ex.windows is None:
        window = min(ex.chunk_size * ex.shard_count, 50_000)
        ex.windows = deque(await store.window_ends(conn, ex.tenant_id, window))
        ex.windows.append(None)
        ex.cursor = None
    for _ in range(WINDOWS_PER_CHUNK):
        if not ex.windows:
            return subs or None
        last = ex.windows.popleft()
        after, ex.cursor = ex.cursor, last
        subs += await store.due_subscriptions(conn, ex.tenant_id, ex.as_of, ex.failed, after, last,
                                              shard=ex.shard, shard_count=ex.shard_count)
        if len(subs) >= ex.chunk_size // 2:
            break
    return subs


async def _add_progress(conn: asyncpg.Connection, ex: _Execution, chunk: _Chunk) -> None:
    run = await store.get_run(conn, ex.tenant_id, ex.run_id, for_update=True)  # serializes concurrent chunks
    # Another execution of this run (a redelivered request) may have recorded a failure of
    # the same subscription already: record each once, and skip those from now on.
    known = {f["subscription_id"] for f in run["failures"]}
    if known:
        new = [f for f in chunk.failures if f["subscription_id"] not in known]
        chunk.due -= len(chunk.failures) - len(new)
        chunk.failures = new
        ex.failed += [uuid.UUID(s) for s in known if uuid.UUID(s) not in ex.failed]
    totals = {c: Decimal(a) for c, a in run["totals"].items()}
    for currency, amount in chunk.totals.items():
        totals[currency] = totals.get(currency, Decimal(0)) + amount
    await store.add_progress(conn, ex.tenant_id, ex.run_id, due=chunk.due, billed=chunk.billed,
                             skipped=chunk.skipped, failed=len(chunk.failures), failures=chunk.failures,
                             totals={c: decimal_to_str(a) for c, a in totals.items()})
    await store.add_shard_progress(conn, ex.tenant_id, ex.run_id, ex.shard, chunk.due, chunk.billed)


@dataclass
class _Billed:
    """One subscription's outcome in a chunk, computed before anything is written."""

    sub: Subscription  # as it was
    closed: list[ClosedPeriod]
    plans: list[uuid.UUID]  # the plan in effect during each closed period
    trials: list[bool]  # whether each closed period was a trial
    payloads: list[bytes | None]  # the encoded invoice request of each closed period (None: no lines)
    request_ids: list[str]  # the invoice request id of each closed period, as text ("": no lines)
    late_events: list[str]  # late event ids billed by the first closed period
    pending: list[uuid.UUID]  # pending line ids billed by the first closed period


async def _bill_chunk(conn: asyncpg.Connection, caller: Caller, ex: _Execution, subs: list[Subscription]) -> _Chunk:
    """One chunk, set-based: a fixed number of round trips whatever its size.

    Reads in bulk (plans, "opened by a run", usage totals of every period to close, unique
    counts, late usage, pending lines), computes every closed period in the pure domain,
    then writes in bulk: billed periods (ON CONFLICT DO NOTHING RETURNING: only periods this
    chunk marked get their invoice request), outbox rows, the subscriptions' new state,
    audit rows, late usage and pending lines marked billed. A subscription whose
    computation raises is left out before anything is written: recorded as failed, with
    its reason; no savepoint is needed.
    """
    tenant, run_id, as_of = caller.tenant_id, ex.run_id, ex.as_of
    ids = [s.id for s in subs]
    firsts = [(s.id, s.current_period_start) for s in subs]
    late_rows = await store.unbilled_late_usage(conn, tenant, ids)
    plan_ids = {s.plan_id for s in subs} | {s.pending_plan_id for s in subs if s.pending_plan_id}
    await _load_plans(conn, tenant, ex.plans, plan_ids | {r["plan_id"] for r in late_rows if r["plan_id"]})
    # "Opened (and charged in advance) by a run" matters only to a period whose plan charges
    # its fee in advance: asked for those alone, not for a chunk of in-arrears plans.
    in_advance = [p for p, s in zip(firsts, subs) if _fee_in_advance(ex.plans[s.plan_id])]
    charged = await store.opened_by_a_run(conn, tenant, in_advance) if in_advance else set()
    usage = _usage_by_period(firsts, await store.usage_totals_from(conn, tenant, firsts, as_of,
                                                                   _totals_charged(ex.plans, plan_ids)))
    await _add_unique_counts(conn, tenant, ex.plans, subs, firsts, as_of, usage)
    late = await _late_lines(conn, tenant, ex.plans, subs, late_rows)
    pending = await pending_lines.unbilled(conn, tenant, ids)

    chunk = _Chunk(due=len(subs))
    # The Python work runs in a thread: the event loop stays free to drive the other
    # worker's statements meanwhile, so PostgreSQL and Python overlap.
    outcomes = await asyncio.to_thread(_compute, tenant, run_id, as_of, subs, ex.plans, usage, charged, late,
                                       pending, chunk)
    billed_before = await store.insert_billed_periods(conn, tenant, run_id, [
        (o.sub.id, c.period_start, c.period_end, c.invoice_request_id if c.lines else None, plan, trial)
        for o in outcomes for c, plan, trial in zip(o.closed, o.plans, o.trials)])
    request_id = ex.request_id or str(run_id)
    invoices, rows, audits, late_billed, pending_ids, pending_requests, columns = await asyncio.to_thread(
        _write_rows, caller, run_id, request_id, outcomes, billed_before, chunk)
    await _enqueue_invoices(conn, tenant, invoices)
    await outbox.enqueue_many(conn, tenant, rows)
    await store.advance_subscriptions(conn, tenant, [o.closed[-1].subscription for o in outcomes if o.closed],
                                      columns)
    await audit_store.append_many(conn, tenant, entity_type="subscription", actor=caller.actor,
                                  request_id=request_id, rows=audits)
    await store.mark_late_billed(conn, tenant, run_id, late_billed)
    if pending_ids:
        await pending_lines.mark_billed(conn, tenant, pending_ids, pending_requests)
    return chunk


async def _bill_canceled_late_usage(conn: asyncpg.Connection, caller: Caller, ex: _Execution) -> _Chunk | None:
    """Late usage of the shard's canceled subscriptions (docs/billing.md, Late usage): a
    canceled subscription never closes a period again, so its late events, which would wait
    for its next period, get an invoice request of their own: one per subscription, with a
    late_usage line per metric and original period, priced as in a chunk
    (`_late_lines`, billing/domain/late_usage.py). Set-based like a chunk: one query finds
    (and locks) the candidates, one reads their late usage, then bulk writes (outbox rows,
    audit rows, late_usage_billed), in the caller's transaction, which completes the shard.
    Returns the counts to add to the run (None: nothing to bill, nothing written).

    The request id is derived from the events it bills (`late:<sha256 of their sorted
    ids>`): each late event is billed once (late_usage_billed's primary key, written in
    the transaction of the outbox row), so two committed requests never bill the same set
    and never share an id; a redelivered run request finds the events billed (nothing to
    do) or, after a crash before the commit, nothing was written and it bills them again."""
    tenant = ex.tenant_id
    subs = await store.canceled_with_late_usage(conn, tenant, shard=ex.shard, shard_count=ex.shard_count)
    if not subs:
        return None
    by_id = {s.id: s for s in subs}
    rows: dict[uuid.UUID, list[dict]] = {}
    for r in await store.unbilled_late_usage(conn, tenant, list(by_id)):
        r = dict(r)
        sub = by_id[r["subscription_id"]]
        if r["billed_start"] is None and sub.canceled_at is not None:
            # No billed period holds it: the period an immediate cancel cut short (its final
            # request billed it up to the cancel). Its plan is the subscription's (it cannot
            # change after the cancel), it was a trial if it started before the trial's end,
            # and it ended at the cancel.
            r["trial"] = sub.trial_end is not None and r["period_start"] < sub.trial_end
            r["billed_end"] = min(r["period_end"], sub.canceled_at)
        rows.setdefault(sub.id, []).append(r)
    await _load_plans(conn, tenant, ex.plans, {s.plan_id for s in subs}
                      | {r["plan_id"] for rs in rows.values() for r in rs if r["plan_id"]})
    chunk = _Chunk()
    issued = now()
    invoices: list[tuple[str, bytes]] = []
    audits: list[tuple] = []
    billed: list[tuple[str, uuid.UUID, uuid.UUID]] = []
    run_text = str(ex.run_id)
    stale: list[uuid.UUID] = []
    for sub in subs:
        if sub.id not in rows:
            stale.append(sub.id)  # its late events were billed between the two reads
            continue
        chunk.due += 1
        try:
            items = (await _late_lines(conn, tenant, ex.plans, [sub], rows[sub.id])).get(sub.id, [])
            events = sorted(e for ids, _ in items for e in ids)
            lines = [ln for _, ln in items]
            digest = hashlib.sha256("\x00".join(events).encode()).hexdigest()  # NUL is not allowed in an event id
            request = invoice_requests.request_id(tenant, sub.id, f"late:{digest}")
            currency = ex.plans[sub.plan_id].currency
            start, end = invoice_requests.span(lines)
            record = invoice_requests.invoice_record(
                tenant_id=tenant, invoice_request_id=request, run_id=ex.run_id, sub=sub, currency=currency,
                period_start=start, period_end=end, lines=lines, issued_at=issued)
            payload = codec.encode(codec.Schema.INVOICE_REQUEST, record)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the others go on
            reason = f"late usage: {type(exc).__name__}: {exc}"[:1000]
            chunk.failures.append({"subscription_id": str(sub.id), "reason": reason})
            log.warning("late usage not billed", extra={"subscription_id": str(sub.id), "reason": reason})
            continue
        rid = str(request)
        invoices.append((rid, payload))
        billed += [(e, sub.id, request) for e in events]
        amount = invoice_requests.amount(lines)
        chunk.add_invoice(currency, amount)  # negative when late usage lowered a price (volume tiers)
        chunk.billed += 1
        details = {"run_id": run_text, "invoice_request_id": rid, "late_events": len(events),
                   "period_start": start.isoformat(), "period_end": end.isoformat(),
                   "total": decimal_to_str(amount), "currency": currency}
        audits.append((sub.id, "subscription.late_usage_billed", None, {"details": details}))
    if invoices:
        await _enqueue_invoices(conn, tenant, invoices)
        await audit_store.append_many(conn, tenant, entity_type="subscription", actor=caller.actor,
                                      request_id=run_text, rows=audits)
        marked = await store.mark_late_billed(conn, tenant, ex.run_id, billed)
        if marked != len(billed):  # cannot happen (the rows are locked): roll back rather than bill twice
            raise RuntimeError(f"late usage billed concurrently: marked {marked} of {len(billed)} events")
    if stale:
        await store.clear_late_pending(conn, tenant, stale)
    if chunk.due:
        await _add_progress(conn, ex, chunk)
    return chunk


async def close_ended_periods(conn: asyncpg.Connection, caller: Caller, sub: Subscription, as_of: datetime,
                              request_id: str) -> "_Chunk | None":
    """Bill the periods of `sub` that ended by `as_of` and no run closed yet, in the caller's
    transaction, which holds the subscription's row locked: what a run would do for it
    (one chunk of one subscription: invoice requests, billed periods, the advance, audit
    rows and events, late usage and pending lines billed), with no run (`run_id` the nil
    UUID) and the caller as the actor. A change made after a period ended but before a run
    closed it (an immediate cancel, a plan change, a pause) then applies to the period that
    holds its time, and the ended period is billed in full, not left to a run that would
    never bill it (a canceled subscription) or bill it at the new state.

    Returns what was billed, None when nothing was due (the caller reads the subscription
    again, and passes it to `observe_closed` once its transaction committed).
    FailedPrecondition when the subscription cannot be billed (its reason): the caller's
    change is refused rather than applied to a period that stays unbilled."""
    if not invoicing.is_due(sub, as_of):
        return None
    ex = _Execution(caller.tenant_id, invoice_requests.NO_RUN, as_of, 0, 1, 1, [], request_id=request_id)
    chunk = await _bill_chunk(conn, caller, ex, [sub])
    if chunk.failures:
        raise FailedPrecondition(f"subscription {sub.id}: its ended period cannot be billed: "
                                 f"{chunk.failures[0]['reason']}")
    return chunk


def observe_closed(chunk: "_Chunk") -> None:
    """Count the invoice requests of periods a change closed (`close_ended_periods`), once
    the change committed: a change refused after the close counts nothing."""
    observe_invoices("change", chunk)


def observe_change_invoice(currency: str, total: Decimal) -> None:
    """Count the invoice request a change wrote itself (an immediate cancel's final one, a
    proration invoiced now), once the change committed."""
    chunk = _Chunk()
    chunk.add_invoice(currency, total)
    observe_invoices("change", chunk)


def _compute(tenant, run_id, as_of, subs, plans, usage, charged, late, pending, chunk: _Chunk) -> list["_Billed"]:
    """Every closed period of the chunk, in the pure domain; failures recorded in `chunk`."""
    outcomes: list[_Billed] = []
    # One issue time per chunk, and the ids as text once, not per invoice request.
    ids = _RequestIds(str(tenant), str(run_id), now())
    for sub in subs:
        try:
            outcomes.append(_close_all(tenant, ids, as_of, sub, plans, usage, sub.id in charged,
                                       late.get(sub.id, ()), pending.get(sub.id, ())))
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the run goes on
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            chunk.failures.append({"subscription_id": str(sub.id), "reason": reason})
            log.warning("subscription not billed", extra={"subscription_id": str(sub.id), "reason": reason})
    return outcomes


def _write_rows(caller: Caller, run_id: uuid.UUID, request_id: str, outcomes: list["_Billed"], billed_before: set,
                chunk: _Chunk):
    """The rows to write for what `insert_billed_periods` marked (all but `billed_before`):
    outbox rows, audit rows, late events and pending lines billed, and the subscription
    columns the chunk changed; counts and totals into `chunk`."""
    invoices: list[tuple[str, bytes]] = []  # (invoice request id, encoded request)
    rows: list[tuple] = []  # outbox rows of the subscription events
    audits: list[tuple] = []
    late_billed: list[tuple[str, uuid.UUID, uuid.UUID]] = []
    pending_ids: list[uuid.UUID] = []
    pending_requests: list[uuid.UUID] = []
    columns: set[str] = set()  # subscription columns changed by some close of the chunk
    run_text = str(run_id)
    for o in outcomes:
        billed = skipped = False
        prev = o.sub
        for i, (closed, payload) in enumerate(zip(o.closed, o.payloads)):
            rid = o.request_ids[i]
            if not billed_before or (o.sub.id, closed.period_start) not in billed_before:
                billed = True
                if payload is not None:
                    invoices.append((rid, payload))
                    chunk.add_invoice(closed.currency, closed.total)
                    if i == 0:  # late usage and pending lines went into the first closed period
                        late_billed += [(e, o.sub.id, closed.invoice_request_id) for e in o.late_events]
                        pending_ids += o.pending
                        pending_requests += [closed.invoice_request_id] * len(o.pending)
            else:
                # Billed before, yet the subscription was not advanced past it: advance only
                # (its late usage and pending lines stay unbilled, for the next period).
                skipped = True
            # Times as they are: the audit rows' JSON writes them (store.db.json_text).
            details = {"run_id": run_text, "period_start": closed.period_start,
                       "period_end": closed.period_end, "invoice_request_id": rid,
                       "total": decimal_to_str(closed.total), "currency": closed.currency}
            before, after = _diff(prev, closed.subscription)
            columns.update(k for k in before if k != "status" or before[k] != after[k])
            after["details"] = details
            audits.append((o.sub.id, closed.event, before, after))
            if closed.event != "subscription.period_advanced":  # status or plan changed: announce it
                _, key, payload, headers = events.build(
                    caller, event_type=closed.event, subscription_id=str(o.sub.id), customer_id=o.sub.customer_id,
                    occurred_at=closed.period_end, cause=f"billing-run:{closed.invoice_request_id}",
                    from_status=prev.status.value, to_status=closed.subscription.status.value,
                    data={**details, "period_start": closed.period_start.isoformat(),
                          "period_end": closed.period_end.isoformat()})
                rows.append((events.STREAM, key, payload, json.dumps(headers)))
            prev = closed.subscription
        if billed:
            chunk.billed += 1
        elif skipped:
            chunk.skipped += 1
    return invoices, rows, audits, late_billed, pending_ids, pending_requests, columns


_ZERO = Decimal(0)
_INVOICE_CONTENT_TYPE = codec.content_type(codec.Schema.INVOICE_REQUEST)


async def _enqueue_invoices(conn: asyncpg.Connection, tenant: uuid.UUID, invoices: list[tuple[str, bytes]]) -> None:
    """The outbox rows of encoded invoice requests, (id, payload): keyed by their id, with the
    headers `invoice_requests.enqueue` writes. Before the chunk's subscription events: the
    relay publishes in outbox order, and the two go to different topics."""
    await outbox.enqueue_keyed(conn, tenant, INVOICES_STREAM, {"content-type": _INVOICE_CONTENT_TYPE},
                               "invoice-request-id", invoices)


_SUB_FIELDS = tuple(f.name for f in fields(Subscription) if f.name != "status")


def _diff(before: Subscription, after: Subscription) -> tuple[dict, dict]:
    """The fields a period close changed, and the status, as they were and as they are: the
    audit row of a period close holds these, not two whole snapshots. The audit rows are
    the run's largest write; the full state at any point follows from the subscription's
    earlier rows. Values as they are (times, ids): `audit_store.append_many` writes them in
    the audit trail's JSON form (`subscriptions.snapshot`'s)."""
    b, a = {"status": before.status.value}, {"status": after.status.value}
    old, new = before.__dict__, after.__dict__
    for k in _SUB_FIELDS:
        x, y = old[k], new[k]
        if x is not y and x != y:
            b[k], a[k] = x, y
    return b, a


async def _load_plans(conn, tenant: uuid.UUID, plans: dict[uuid.UUID, PlanSpec], wanted: set[uuid.UUID]) -> None:
    missing = [p for p in wanted if p not in plans]
    for plan_id, spec in await usage_store.plan_specs(conn, tenant, missing):
        plans[plan_id] = plan_from_dict(spec)  # plans never change once created


def _usage_by_period(firsts: list[tuple[uuid.UUID, datetime]], rows) -> dict[tuple[uuid.UUID, datetime],
                                                                                 dict[str, PeriodUsage]]:
    """The rows of `store.usage_totals_from(firsts, ...)` by (subscription, period start)."""
    out: dict[tuple[uuid.UUID, datetime], dict[str, PeriodUsage]] = {}
    for n, start, metric, total, count, most, latest in rows:
        sub_id, first = firsts[n - 1]
        out.setdefault((sub_id, start or first), {})[metric] = invoicing.period_usage(total, count, most, latest)
    return out


# The usage total each aggregation prices (unique_count is counted from the events).
_TOTAL_OF = {Aggregation.SUM: "quantity_sum", Aggregation.COUNT: "event_count", Aggregation.MAX: "quantity_max",
             Aggregation.LATEST: "latest_quantity"}


def _fee_in_advance(spec: PlanSpec) -> bool:
    return spec.billing_timing is BillingTiming.IN_ADVANCE and bool(spec.base_fee)


def _totals_charged(plans: dict[uuid.UUID, PlanSpec], plan_ids: set[uuid.UUID]) -> set[str]:
    """The usage totals these plans price on."""
    return {_TOTAL_OF[c.aggregation] for p in plan_ids if p in plans for c in plans[p].usage_charges
            if c.aggregation in _TOTAL_OF}


async def _add_unique_counts(conn, tenant: uuid.UUID, plans: dict[uuid.UUID, PlanSpec], subs: list[Subscription],
                             firsts: list, as_of: datetime, usage: dict) -> None:
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
        for r in await store.unique_counts(conn, tenant, metric, prop, periods, as_of):
            by_metric = usage.setdefault((r["subscription_id"], r["period_start"]), {})
            prev = by_metric.get(metric, PeriodUsage())
            by_metric[metric] = PeriodUsage(prev.quantity_sum, prev.event_count, prev.quantity_max,
                                            prev.latest_quantity, r["n"])
        for p in periods:  # counted: no event with the property is 0, not unknown
            by_metric = usage.setdefault(p, {})
            if metric not in by_metric or by_metric[metric].unique_count is None:
                prev = by_metric.get(metric, PeriodUsage())
                by_metric[metric] = PeriodUsage(prev.quantity_sum, prev.event_count, prev.quantity_max,
                                                prev.latest_quantity, 0)


async def _late_lines(conn, tenant: uuid.UUID, plans: dict[uuid.UUID, PlanSpec], subs: list[Subscription],
                      rows) -> dict[uuid.UUID, list[tuple[list[str], Line]]]:
    """Per subscription: (late event ids, the late_usage line billing them), priced by the
    plan of their original period (docs/billing.md, billing/domain/late_usage.py)."""
    by_id = {s.id: s for s in subs}
    out: dict[uuid.UUID, list[tuple[list[str], Line]]] = {}
    for r in rows:
        sub = by_id[r["subscription_id"]]
        spec = plans[r["plan_id"] or sub.plan_id]
        charge = next((c for c in spec.usage_charges if c.metric_code == r["metric_code"]), None)
        before = PeriodUsage(r["b_sum"], r["b_count"], r["b_max"], r["b_latest"])
        after = PeriodUsage(r["a_sum"], r["a_count"], r["a_max"], r["a_latest"])
        if charge is not None and charge.unique_property:
            b, a = await store.late_unique_counts(conn, tenant, sub.id, r["metric_code"], r["period_start"],
                                                  charge.unique_property, list(r["event_ids"]))
            before, after = replace(before, unique_count=b), replace(after, unique_count=a)
        start = r["billed_start"] or r["period_start"]
        end = r["billed_end"] or r["period_end"]
        late = LateUsage(r["metric_code"], start, end, len(r["event_ids"]), before, after)
        out.setdefault(sub.id, []).append(
            (list(r["event_ids"]), late_usage_line(late, charge, spec.currency, trial=bool(r["trial"]))))
    return out


class _RequestIds(NamedTuple):
    tenant: str
    run: str
    issued_at: datetime


def _close_all(tenant: uuid.UUID, ids: _RequestIds, as_of: datetime, sub: Subscription,
               plans: dict[uuid.UUID, PlanSpec], usage: dict, charged_in_advance: bool,
               late: Sequence[tuple[list[str], Line]], pending: Sequence[tuple[uuid.UUID, Line]]) -> _Billed:
    """Close every ended period of `sub` (pure computation and encoding, nothing written).
    Late usage and pending adjustment lines go into the first period closed."""
    out = _Billed(sub, [], [], [], [], [], [e for ids, _ in late for e in ids], [i for i, _ in pending])
    extra = [ln for _, ln in late] + [ln for _, ln in pending]
    current = sub
    while invoicing.is_due(current, as_of):
        if len(out.closed) >= MAX_PERIODS_PER_SUBSCRIPTION:
            raise RuntimeError(f"more than {MAX_PERIODS_PER_SUBSCRIPTION} periods due")
        spec = plans[current.plan_id]
        closed = invoicing.close_period(
            tenant, current, spec, usage.get((current.id, current.current_period_start), _NO_USAGE),
            next_plan=plans.get(current.pending_plan_id) if current.pending_plan_id else None,
            charged_in_advance=charged_in_advance, extra_lines=extra,
        )
        out.closed.append(closed)
        out.plans.append(current.plan_id)
        out.trials.append(current.status is SubscriptionStatus.TRIALING)
        if closed.lines:
            rid = str(closed.invoice_request_id)
            out.request_ids.append(rid)
            out.payloads.append(codec.encode(codec.Schema.INVOICE_REQUEST, invoice_requests.invoice_record(
                tenant_id=ids.tenant, invoice_request_id=rid, run_id=ids.run, sub=current,
                currency=closed.currency, period_start=closed.period_start, period_end=closed.period_end,
                lines=closed.lines, issued_at=ids.issued_at)))
        else:
            out.request_ids.append("")
            out.payloads.append(None)
        current = closed.subscription
        charged_in_advance = True  # the next period was opened (and, in advance, charged) right here
        extra = []
    return out


_NO_USAGE: dict[str, PeriodUsage] = {}


# -- metrics ------------------------------------------------------------------------------

def _observe_chunk(chunk: _Chunk) -> None:
    metrics.BILLING_SUBSCRIPTIONS.labels("billed").inc(chunk.billed)
    metrics.BILLING_SUBSCRIPTIONS.labels("skipped").inc(chunk.skipped)
    metrics.BILLING_SUBSCRIPTIONS.labels("failed").inc(len(chunk.failures))
    observe_invoices("run", chunk)


def observe_invoices(source: str, chunk: _Chunk) -> None:
    """The invoice requests of a committed chunk, by who wrote them (run, change), and their
    totals: every invoice request is counted here once, whatever wrote it. Requests with a
    negative total go to the credited counter as a positive amount, the others to the
    billed one, so billed minus credited is the net amount invoiced."""
    if chunk.invoices:
        metrics.INVOICE_REQUESTS.labels(source).inc(chunk.invoices)
    for currency, amount in chunk.totals.items():
        credit = chunk.credited.get(currency, _ZERO)
        metrics.BILLING_AMOUNT.labels(currency).inc(float(amount + credit))
        if credit:
            metrics.BILLING_CREDITED.labels(currency).inc(float(credit))


def _observe_finished(row) -> None:
    metrics.BILLING_RUNS.labels(row["status"]).inc()
    if row["started_at"] and row["finished_at"]:
        metrics.BILLING_RUN_SECONDS.observe((row["finished_at"] - row["started_at"]).total_seconds())


"""Closing periods, one chunk of subscriptions at a time: bulk read -> pure compute -> bulk
write, in the caller's transaction (docs/billing.md, "A chunk"). A billing run closes its
shard chunk by chunk (run_execution); a change closes the ended periods of the one
subscription it changes first (`close_ended_periods`)."""
from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Mapping, NamedTuple, Sequence

import asyncpg

from billing.domain import invoicing
from billing.domain.invoice_assembly import Discount
from billing.domain.credits import CreditBook, CreditOutcome
from billing.domain.invoicing import ClosedPeriod
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.plans import PlanSpec
from billing.domain.pricing import Line, PeriodUsage
from billing.domain.subscriptions import Subscription
from billing.services import invoice_requests, period_reads, period_writes
from billing.services.context import Caller
from billing.services.errors import FailedPrecondition
from billing.services.run_metrics import ChunkOutcome
from billing.store import billed_periods

log = logging.getLogger(__name__)

# A run bills at most this many periods of one subscription (a daily plan a year behind
# is 366); more means something is wrong with the subscription: it fails alone.
MAX_PERIODS_PER_SUBSCRIPTION = 1000
_NO_USAGE: dict[str, PeriodUsage] = {}
_NONE = Decimal(0)


@dataclass
class CloseContext:
    """What the closes of a chunk share: who closes (a run, or none: NO_RUN), as of when,
    and the plans read so far (plans never change once created). On a test clock
    (`test_clock_id`), every subscription of the chunk is on that clock, `as_of` is clock
    time and the invoice requests are issued at it and marked as the clock's."""

    tenant_id: uuid.UUID
    run_id: uuid.UUID
    as_of: datetime
    request_id: str = ""  # of the audit rows and events (default: the run id)
    plans: dict[uuid.UUID, PlanSpec] = field(default_factory=dict)
    test_clock_id: uuid.UUID | None = None


@dataclass
class Billed:
    """One subscription's outcome in a chunk, computed before anything is written."""

    sub: Subscription  # as it was
    closed: list[ClosedPeriod]
    plans: list[uuid.UUID]  # the plan in effect during each closed period
    trials: list[bool]  # whether each closed period was a trial
    payloads: list[bytes | None]  # the encoded invoice request of each closed period (None: no lines)
    request_ids: list[str]  # the invoice request id of each closed period, as text ("": no lines)
    late_events: list[str]  # late event ids billed by the first closed period
    pending: list[uuid.UUID]  # pending line ids billed by the first closed period
    credits: list[CreditOutcome | None] = field(default_factory=list)  # what each closed period burned


async def bill_chunk(conn: asyncpg.Connection, caller: Caller, ctx: CloseContext,
                     subs: list[Subscription]) -> ChunkOutcome:
    """One chunk, set-based: a fixed number of round trips whatever its size. A subscription
    whose computation raises is left out before anything is written (recorded as failed,
    with its reason); billed_periods refuses a period billed before, whose close then only
    advances the subscription."""
    inputs = await period_reads.read_chunk(conn, ctx.tenant_id, ctx.plans, subs, ctx.as_of)
    chunk = ChunkOutcome(due=len(subs))
    # The Python work runs in a thread: the event loop stays free to drive another worker's
    # statements meanwhile, so PostgreSQL and Python overlap.
    outcomes = await asyncio.to_thread(_compute, ctx, subs, inputs, chunk)
    billed_before = await billed_periods.insert_billed_periods(conn, ctx.tenant_id, ctx.run_id, [
        (o.sub.id, c.period_start, c.period_end, c.invoice_request_id if c.lines else None, plan, trial)
        for o in outcomes for c, plan, trial in zip(o.closed, o.plans, o.trials)])
    request_id = ctx.request_id or str(ctx.run_id)
    writes = await asyncio.to_thread(period_writes.rows_of, caller, ctx.run_id, outcomes, billed_before, chunk,
                                     ctx.plans)
    await period_writes.write(conn, caller, ctx.run_id, request_id, outcomes, writes, ctx.test_clock_id)
    return chunk


class _RequestIds(NamedTuple):
    tenant: str
    run: str
    issued_at: datetime
    test_clock: str | None


def _compute(ctx: CloseContext, subs: list[Subscription], inputs: period_reads.ChunkInputs,
             chunk: ChunkOutcome) -> list[Billed]:
    """Every closed period of the chunk, in the pure domain; failures recorded in `chunk`."""
    outcomes: list[Billed] = []
    # One issue time per chunk, and the ids as text once, not per invoice request.
    clock = str(ctx.test_clock_id) if ctx.test_clock_id else None
    ids = _RequestIds(str(ctx.tenant_id), str(ctx.run_id), ctx.as_of if clock else datetime.now(timezone.utc), clock)
    book = inputs.credits
    for sub in subs:
        mark = book.mark() if book else None
        try:
            outcomes.append(_close_all(ctx, ids, sub, inputs.usage, sub.id in inputs.charged,
                                       inputs.late.get(sub.id, ()), inputs.pending.get(sub.id, ()), book,
                                       inputs.discounts.get(sub.id, ()), inputs.progressive))
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the run goes on
            if mark is not None:
                book.restore(mark)  # what it burned is not written: the chunk's others may burn it
            chunk.fail(sub.id, f"{type(exc).__name__}: {exc}")
            log.warning("subscription not billed", extra={"subscription_id": str(sub.id),
                                                          "reason": chunk.failures[-1]["reason"]})
    return outcomes


def _close_all(ctx: CloseContext, ids: _RequestIds, sub: Subscription, usage: period_reads.UsageByPeriod,
               charged_in_advance: bool, late: Sequence[tuple[list[str], Line]],
               pending: Sequence[tuple[uuid.UUID, Line]], book: CreditBook,
               discounts: Sequence[Discount] = (),
               progressive: Mapping[tuple[uuid.UUID, datetime], Decimal] | None = None) -> Billed:
    """Close every ended period of `sub` (pure computation and encoding, nothing written).
    Late usage and pending adjustment lines go into the first period closed; each close
    hands the discounts, as it counted them, to the next. `progressive`: what threshold
    invoices charged per (subscription, period start), subtracted by that period's close."""
    out = Billed(sub, [], [], [], [], [], [e for ids, _ in late for e in ids], [i for i, _ in pending])
    extra = [ln for _, ln in late] + [ln for _, ln in pending]
    plans, current = ctx.plans, sub
    while invoicing.is_due(current, ctx.as_of):
        if len(out.closed) >= MAX_PERIODS_PER_SUBSCRIPTION:
            raise RuntimeError(f"more than {MAX_PERIODS_PER_SUBSCRIPTION} periods due")
        assert current.current_period_start is not None  # is_due: it has a period
        closed = invoicing.close_period(
            ctx.tenant_id, current, plans[current.plan_id],
            usage.get((current.id, current.current_period_start)) or usage.get((current.id, None), _NO_USAGE),
            next_plan=plans.get(current.pending_plan_id) if current.pending_plan_id else None,
            charged_in_advance=charged_in_advance, extra_lines=extra, discounts=discounts,
            progressive_billed=progressive.get((current.id, current.current_period_start), _NONE) if progressive
            else _NONE,
        )
        discounts = closed.discounts
        closed = _apply_credits(out, book, current, closed)
        _add_closed(out, ids, current, closed)
        current = closed.subscription
        charged_in_advance = True  # the next period was opened (and, in advance, charged) right here
        extra = []
    return out


def _apply_credits(out: Billed, book: CreditBook, current: Subscription, closed: ClosedPeriod) -> ClosedPeriod:
    """The credits stage: prepaid grants burn the invoice's total. It runs LAST (charges ->
    discounts -> commitment true-up -> credits, docs/billing.md "Credits"): a stage that
    changes the amount due goes before this call."""
    closed, burned = book.apply(current.id, current.customer_id, closed)
    out.credits.append(burned)
    return closed


def _add_closed(out: Billed, ids: _RequestIds, current: Subscription, closed: ClosedPeriod) -> None:
    out.closed.append(closed)
    out.plans.append(current.plan_id)
    out.trials.append(current.status is SubscriptionStatus.TRIALING)
    if not closed.lines:
        out.request_ids.append("")
        out.payloads.append(None)
        return
    rid, payload = invoice_requests.encode(
        tenant_id=ids.tenant, invoice_request_id=str(closed.invoice_request_id), run_id=ids.run, sub=current,
        currency=closed.currency, lines=closed.lines, period=(closed.period_start, closed.period_end),
        issued_at=ids.issued_at, test_clock_id=ids.test_clock, reason=invoice_requests.PERIOD)
    out.request_ids.append(rid)
    out.payloads.append(payload)


async def preview_closes(conn: asyncpg.Connection, caller: Caller, sub: Subscription,
                         as_of: datetime, test_clock_id: uuid.UUID | None = None) -> list[ClosedPeriod]:
    """What a run would bill for `sub` (PreviewInvoice, docs/time.md): the chunk's own reads
    and `_compute`, for a chunk of one, with nothing written. At or after the current
    period's end: every period a run with `as_of` would close. Before it: the current period
    as the run will close it at its end, with what is recorded by now.
    FailedPrecondition when it has no period to bill, or cannot be billed (its reason)."""
    if sub.status not in invoicing.BILLABLE or sub.current_period_end is None:
        raise FailedPrecondition(f"subscription {sub.id} is {sub.status.value}: it has no period to bill",
                                 reason="NO_CURRENT_PERIOD")
    ctx = CloseContext(caller.tenant_id, invoice_requests.NO_RUN, max(as_of, sub.current_period_end),
                       test_clock_id=test_clock_id)
    inputs = await period_reads.read_chunk(conn, ctx.tenant_id, ctx.plans, [sub], ctx.as_of, lock=False)
    chunk = ChunkOutcome(due=1)
    outcomes = _compute(ctx, [sub], inputs, chunk)
    if chunk.failures:
        raise FailedPrecondition(f"subscription {sub.id} cannot be billed: {chunk.failures[0]['reason']}")
    return outcomes[0].closed


async def close_ended_periods(conn: asyncpg.Connection, caller: Caller, sub: Subscription, as_of: datetime,
                              request_id: str, test_clock_id: uuid.UUID | None = None) -> ChunkOutcome | None:
    """Bill the periods of `sub` that ended by `as_of` and no run closed yet, in the caller's
    transaction, which holds the subscription's row locked: what a run would do for it,
    with no run (`run_id` the nil UUID) and the caller as the actor. A change made after a
    period ended but before a run closed it then applies to the period that holds its
    time, and the ended period is billed in full (docs/billing.md).

    Returns what was billed, None when nothing was due (the caller reads the subscription
    again, and passes it to `run_metrics.observe_closed` once its transaction committed).
    FailedPrecondition when the subscription cannot be billed (its reason): the caller's
    change is refused rather than applied to a period that stays unbilled."""
    if not invoicing.is_due(sub, as_of):
        return None
    ctx = CloseContext(caller.tenant_id, invoice_requests.NO_RUN, as_of, request_id=request_id,
                       test_clock_id=test_clock_id)
    chunk = await bill_chunk(conn, caller, ctx, [sub])
    if chunk.failures:
        raise FailedPrecondition(f"subscription {sub.id}: its ended period cannot be billed: "
                                 f"{chunk.failures[0]['reason']}")
    return chunk

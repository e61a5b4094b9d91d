"""Partition maintenance of usage_events and outbox (docs/usage.md, "Partitions and retention").

* `create_ahead`: this month's partition of each and the next `months_ahead`, idempotent. Run by the
  scheduler role every `BILLING_PARTITION_MAINTENANCE_INTERVAL_S` (`scheduler.PartitionMaintainer`,
  as the worker, through the security-definer usage_partition_ensure) and by `billing maintenance`.
* `apply_retention`: run by `billing maintenance` as the schema owner. A monthly partition
  goes only when every period in it was billed at least `retention_months` ago, ended more
  than the late window ago (no late event can be accepted for it any more) and has no late
  event left unbilled; it is detached, its dedup keys deleted a subscription at a time, and
  dropped (or kept detached, `drop=False`, for an archive). An outbox month goes once it
  ended more than `outbox_days` ago and every row of it is published. An audit month is
  only detached, `audit_months` after it ended, never dropped: archive it, then drop it by hand.
  Idempotency keys older than `idempotency_days` are deleted (the table is not partitioned:
  its key is (tenant_id, key), whatever the time), a tenant at a time, oldest first, in
  batches of `KEY_BATCH`, each its own short transaction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import asyncpg

from billing.store import idempotency, partitions

log = logging.getLogger(__name__)

# Idempotency keys deleted per transaction: row locks on this many keys for a fraction of a second.
KEY_BATCH = 10_000


def months_from(now: datetime, count: int) -> list[date]:
    """The first day of now's month (UTC) and of the `count` months after it."""
    y, m = now.astimezone(timezone.utc).year, now.astimezone(timezone.utc).month
    out = []
    for _ in range(count + 1):
        out.append(date(y, m, 1))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def months_back(now: datetime, months: int) -> datetime:
    """`now` less `months` calendar months (the day clamped to the month's length)."""
    y, m = now.year, now.month - months
    while m < 1:
        y, m = y - 1, m + 12
    day = min(now.day, [31, 29 if y % 4 == 0 and (y % 100 or y % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30,
                        31, 30, 31][m - 1])
    return now.replace(year=y, month=m, day=day)


async def create_ahead(conn: asyncpg.Connection, now: datetime, months_ahead: int) -> list[str]:
    """Ensure the partitions of now's month and the next `months_ahead`; the names created."""
    created = []
    for parent in (partitions.USAGE, partitions.OUTBOX, partitions.AUDIT):
        for month in months_from(now, months_ahead):
            if await partitions.ensure(conn, month, parent):
                created.append(f"{parent}_p{month:%Y_%m}")
    return created


@dataclass
class RetentionReport:
    dropped: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)  # kept detached (archive), not dropped
    kept: dict[str, dict[str, int]] = field(default_factory=dict)  # old enough, but blocked: why
    keys_deleted: int = 0
    default_rows: int = 0
    idempotency_keys_deleted: int = 0


@dataclass(frozen=True)
class RetentionPolicy:
    months: int  # raw usage kept this long after its period was billed; 0: kept forever
    late_window: timedelta  # usage_max_age_days + usage_max_future_skew_s: when late events stop
    drop: bool = True
    lock_timeout_s: float = 3.0
    outbox_days: int = 0  # published outbox rows kept this many days; 0: kept forever
    audit_months: int = 0  # audit months detached (never dropped) this long after they ended; 0: never
    idempotency_days: int = 0  # idempotency keys kept this many days; 0: forever


async def apply_retention(conn: asyncpg.Connection, now: datetime, policy: RetentionPolicy) -> RetentionReport:
    """Detach (and drop) the monthly partitions the policy lets go: usage_events, outbox,
    audit_events (detached only). `conn`: the schema owner, outside a transaction (each step
    commits on its own). A table whose detach waits past the lock timeout is left for the
    next pass (`kept[name] == {"lock_timeout": 1}`)."""
    report = RetentionReport(default_rows=await partitions.default_rows(conn))
    # A pass that detached a partition and stopped before dropping it is finished first.
    leftovers = await partitions.detached(conn) if policy.drop else []
    if policy.months > 0:
        billed_before = months_back(now, policy.months)
        # Only partitions whose every period started before the cut-off can qualify.
        for p in await partitions.monthly(conn):
            if p.end > billed_before:
                break
            why = await partitions.blockers(conn, p, billed_before, policy.late_window, now)
            if any(why.values()):
                report.kept[p.name] = why
                continue
            if not await partitions.detach(conn, p, policy.lock_timeout_s):
                report.kept[p.name] = {"lock_timeout": 1}
                break
            log.info("usage partition detached", extra={"partition": p.name})
            (leftovers if policy.drop else report.detached).append(p.name)
    for name in leftovers:
        for tenant_id, subscription_id in await partitions.detached_subscriptions(conn, name):
            report.keys_deleted += await partitions.forget_keys(conn, name, tenant_id, subscription_id)
        await partitions.drop(conn, name)
        report.dropped.append(name)
        log.info("usage partition dropped", extra={"partition": name})
    await _outbox_retention(conn, now, policy, report)
    if policy.audit_months > 0:
        for p in await partitions.monthly(conn, partitions.AUDIT):
            if p.end > months_back(now, policy.audit_months):
                break
            if not await partitions.detach(conn, p, policy.lock_timeout_s, partitions.AUDIT):
                report.kept[p.name] = {"lock_timeout": 1}
                break
            report.detached.append(p.name)
            log.info("audit partition detached", extra={"partition": p.name})
    if policy.idempotency_days > 0:
        report.idempotency_keys_deleted = await forget_idempotency_keys(
            conn, now - timedelta(days=policy.idempotency_days))
    return report


async def forget_idempotency_keys(conn: asyncpg.Connection, before: datetime, batch: int = KEY_BATCH) -> int:
    """Delete every idempotency key created before `before`: per tenant, `batch` keys per
    transaction, oldest first, until none is left. `conn` outside a transaction. A key
    younger than `before` is never touched; a replay of a deleted key is a new request
    (docs/api.md)."""
    deleted = 0
    for tenant_id in await idempotency.all_tenants(conn):
        while True:
            n = await idempotency.forget_before(conn, tenant_id, before, batch)
            deleted += n
            if n < batch:
                break
    if deleted:
        log.info("idempotency keys deleted", extra={"keys": deleted, "before": before.isoformat()})
    return deleted


async def _outbox_retention(conn: asyncpg.Connection, now: datetime, policy: RetentionPolicy,
                            report: RetentionReport) -> None:
    leftovers = await partitions.detached(conn, partitions.OUTBOX) if policy.drop else []
    if policy.outbox_days > 0:
        for p in await partitions.monthly(conn, partitions.OUTBOX):
            if p.end > now - timedelta(days=policy.outbox_days):
                break
            waiting = await partitions.unpublished(conn, p)
            if waiting:
                report.kept[p.name] = {"unpublished": waiting}
                continue
            if not await partitions.detach(conn, p, policy.lock_timeout_s, partitions.OUTBOX):
                report.kept[p.name] = {"lock_timeout": 1}
                break
            (leftovers if policy.drop else report.detached).append(p.name)
    for name in leftovers:
        await partitions.drop(conn, name)
        report.dropped.append(name)
        log.info("outbox partition dropped", extra={"partition": name})

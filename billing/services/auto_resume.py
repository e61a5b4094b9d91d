"""The automatic resume of paused subscriptions whose `pause_resumes_at` has come: the
scheduler's pass over real-time subscriptions, and a test clock's advance over its own
(docs/subscriptions.md). Each resume is the one ResumeSubscription makes, taking effect AT
its `pause_resumes_at`."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from billing.domain import subscriptions as rules
from billing.domain.plans import PlanSpec
from billing.domain.subscriptions import Subscription
from billing.services import subscriptions
from billing.services.context import Caller
from billing.store import subscriptions as store

_log = logging.getLogger(__name__)


def auto_resume_request_id(sub: Subscription) -> str:
    """The audit request id (and event cause) of the automatic resume of `sub`'s current
    pause: one per pause, so whoever carries it out, its event id is the same."""
    return f"auto-resume:{sub.paused_at.isoformat() if sub.paused_at else ''}"


@dataclass(frozen=True)
class AutoResumeBatch:
    resumed: list[uuid.UUID]
    failed: list[uuid.UUID]


async def resume_due_batch(db, caller: Caller, at: datetime, limit: int,
                           exclude: Sequence[uuid.UUID] = (), test_clock_id: uuid.UUID | None = None) -> AutoResumeBatch:
    """One transaction: up to `limit` of the tenant's paused subscriptions whose
    `pause_resumes_at` is at or before `at`, locked FOR UPDATE SKIP LOCKED, each resumed as
    ResumeSubscription would (same transition, audit row, event through the outbox, pause
    window) but taking effect AT its `pause_resumes_at`. A subscription that fails is
    rolled back alone (a savepoint), logged and reported, and the others go on; `exclude`
    keeps a pass from picking it again. `test_clock_id`: that clock's subscriptions, `at`
    being clock time (an advance); None: the real-time ones (the scheduler)."""
    resumed: list[uuid.UUID] = []
    failed: list[uuid.UUID] = []
    async with db.tenant_tx(caller.tenant_id) as conn:
        subs = await store.due_to_resume(conn, caller.tenant_id, at, limit, list(exclude), test_clock_id)
        specs: dict[uuid.UUID, PlanSpec] = {}
        for sub in subs:
            try:
                async with conn.transaction():
                    if sub.plan_id not in specs:
                        specs[sub.plan_id] = (await subscriptions.load_plan(conn, caller, sub.plan_id, "plan_id"))[0]
                    spec = specs[sub.plan_id]
                    request_id = auto_resume_request_id(sub)
                    change = rules.resume_as_scheduled(sub, at)
                    assert sub.pause_resumes_at is not None  # due_to_resume selects those with one
                    change = await subscriptions.settle_resume(conn, caller, request_id, sub, spec, change, sub.pause_resumes_at)
                    await store.update(conn, caller.tenant_id, change.subscription)
                    await subscriptions.record_change(conn, caller, request_id, sub, change, occurred_at=sub.pause_resumes_at)
                resumed.append(sub.id)
            except Exception:  # noqa: BLE001 - one broken subscription must not stop the others
                _log.exception("automatic resume failed", extra={"subscription_id": str(sub.id)})
                failed.append(sub.id)
    return AutoResumeBatch(resumed, failed)

"""Concurrent CheckEntitlement calls of a tenant in one statement (docs/entitlements.md#reading-the-usage).

While a statement of a (tenant, API key) is in flight, the checks arriving wait and go
together in the next one, as soon as it returns: the round trip, the pooled connection, the
`db.transaction` span and PostgreSQL's per-statement work are shared by a group that grows
with the load, and a check alone goes at once. What the statement asks for is decided from
the plan cache when it starts, for every check of the group (`services/entitlements.py`
judges each from its subscription's rows). A group's statement runs in the context of its
first check (its trace, its log tenant). A failure (a revoked key, the database gone) fails
every check of the group, as it would have failed each alone.
"""
from __future__ import annotations

import asyncio
import contextvars
import uuid
from dataclasses import dataclass

import asyncpg

from billing.ops.metrics import ENTITLEMENT_CHECKS_GROUPED, ENTITLEMENT_STATEMENTS
from billing.services.plans import PlanCache
from billing.services.uow import Database
from billing.store import entitlement_reads

Rows = list[asyncpg.Record]

MAX_GROUP = 256  # checks a statement: the rest wait for the next, so a statement stays short


@dataclass(eq=False)
class _Check:
    subscription: uuid.UUID
    feature_code: str
    future: asyncio.Future
    context: contextvars.Context


class CheckGroups:
    """One per API process (built by the servicer)."""

    def __init__(self) -> None:
        self._waiting: dict[tuple, list[_Check]] = {}
        self._running: set[tuple] = set()
        self._tasks: set[asyncio.Task] = set()
        self.statements = 0  # for tests: statements run, and the checks they answered
        self.checks = 0

    async def rows(self, db: Database, cache: PlanCache, tenant: uuid.UUID, subscription: uuid.UUID,
                   feature_code: str) -> Rows:
        """The statement's rows of this subscription (none: the tenant has no such one)."""
        key = (db, tenant, db.entry(tenant))
        check = _Check(subscription, feature_code, asyncio.get_running_loop().create_future(),
                       contextvars.copy_context())
        self._waiting.setdefault(key, []).append(check)
        if key not in self._running:
            # The statement starts at the loop's next turn, not now: the checks whose calls are
            # ready in this turn join it rather than wait for its answer.
            self._running.add(key)
            asyncio.get_running_loop().call_soon(self._launch, cache, key)
        return await check.future

    def _launch(self, cache: PlanCache, key: tuple) -> None:
        waiting = [c for c in self._waiting.pop(key, ()) if not c.future.done()]  # done: its caller gave up
        group, rest = waiting[:MAX_GROUP], waiting[MAX_GROUP:]
        if rest:
            self._waiting[key] = rest
        if not group:
            self._running.discard(key)
            return
        self._running.add(key)
        task = asyncio.get_running_loop().create_task(self._run(cache, key, group), context=group[0].context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, cache: PlanCache, key: tuple, group: list[_Check]) -> None:
        try:
            by_subscription = await read(key[0], cache, key[1], [(c.subscription, c.feature_code) for c in group])
        except Exception as e:
            for c in group:
                if not c.future.done():
                    c.future.set_exception(e)
        except BaseException:
            for c in group:
                c.future.cancel()
            raise
        else:
            self.statements += 1
            self.checks += len(group)
            ENTITLEMENT_STATEMENTS.inc()
            ENTITLEMENT_CHECKS_GROUPED.inc(len(group))
            for c in group:
                if not c.future.done():
                    c.future.set_result(by_subscription.get(c.subscription, []))
        finally:
            asyncio.get_running_loop().call_soon(self._launch, cache, key)  # the next group, at the next turn


async def read(db: Database, cache: PlanCache, tenant: uuid.UUID,
               checks: list[tuple[uuid.UUID, str]]) -> dict[uuid.UUID, Rows]:
    """One statement for these checks (subscription, feature code): the totals if a cached plan of the tenant meters one of
    their features, and every event count those plans need for them."""
    known = cache.plan_ids(tenant)
    with_usage = False
    uniques: dict[tuple[str, str], None] = {}
    gauges: dict[str, None] = {}
    for code in {code for _, code in checks}:
        reads = cache.metered_somewhere(tenant, code)
        if reads is not None:
            with_usage = True
            uniques.update(dict.fromkeys(zip(reads.unique_metrics, reads.unique_properties)))
            gauges.update(dict.fromkeys(reads.gauge_metrics))
    subscriptions = list(dict.fromkeys(sub for sub, _ in checks))
    async with db.tenant_statement(tenant) as (conn, entry):
        rows = await entitlement_reads.read(conn, tenant, entry.key_hashes, entry.token, subscriptions, with_usage,
                                            known, [m for m, _ in uniques], [p for _, p in uniques], list(gauges))
    by_subscription: dict[uuid.UUID, Rows] = {}
    for r in rows:
        by_subscription.setdefault(r["subscription_id"], []).append(r)
    return by_subscription

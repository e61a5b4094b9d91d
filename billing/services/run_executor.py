"""The executor of billing run shards: a loop of the billing role that claims the shards the
billing consumer recorded, under a lease, and executes them (run_execution) in transactions
of its own, outside any consumer transaction.

A lease, renewed while the shard executes, not a lock held open: an executor that crashes
holds nothing, and once its lease ran out any executor claims the shard again and
continues with what is still due. Two executions of one shard at once (a lease that ran out
under a stalled executor) are safe: they split the due subscriptions (SKIP LOCKED) and
billed_periods refuses a period billed twice.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from opentelemetry import trace

from billing.ops import tracing
from billing.ops.logging import current_tenant
from billing.services import run_execution
from billing.store import billing_runs as store
from billing.store.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutorSettings:
    lease_s: float = 15.0  # a crashed executor's shard is claimed again this long after its last renewal
    renew_s: float = 5.0
    poll_s: float = 0.25  # how often an idle executor looks for recorded shards
    backoff_s: float = 1.0  # after a failed claim or execution (the database away, say), doubled
    max_backoff_s: float = 30.0  # up to this while the failures go on
    chunk_size: int = run_execution.CHUNK_SIZE
    workers: int = run_execution.WORKERS


@dataclass
class ExecutorStats:
    executed: int = 0
    retries: int = 0  # failed claims and executions, retried after a backoff


@dataclass(frozen=True)
class _Job:
    tenant_id: uuid.UUID
    run_id: uuid.UUID
    shard: int
    traceparent: str


def executor_name() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class RunExecutor:
    """A role component (run/stop). `wake()` says a shard was just recorded."""

    def __init__(self, db: Database, settings: ExecutorSettings | None = None, name: str = ""):
        self.db = db
        self.settings = settings or ExecutorSettings()
        self.name = name or executor_name()  # recorded on the shards it executes (executed_by)
        self.stats = ExecutorStats()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._current: asyncio.Task | None = None
        self._failures = 0  # in a row

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; an execution in progress is cancelled (its chunk rolls back) and its
        shard given back, to be claimed again."""
        self._stop.set()
        self._wake.set()
        if self._current is not None:
            self._current.cancel()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                job = await self._claim()
            except Exception as exc:  # noqa: BLE001 - the database away: retried after a backoff
                log.warning("claiming a billing run shard failed: %s", exc)
                await self._back_off()
                continue
            self._failures = 0
            if job is None:
                await self._sleep(self.settings.poll_s)
                continue
            await self._execute(job)

    async def _back_off(self) -> None:
        self.stats.retries += 1
        self._failures += 1
        s = self.settings
        await self._sleep(min(s.max_backoff_s, s.backoff_s * 2 ** min(self._failures - 1, 16)))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _claim(self) -> _Job | None:
        async with self.db.pool.acquire() as conn:  # one read, no transaction (and no span per poll)
            candidates = await store.claimable_shards(conn, 10)
        for tenant_id, run_id, shard in candidates:
            async with self.db.tenant_tx(tenant_id) as conn:
                traceparent = await store.claim_shard(conn, tenant_id, run_id, shard, self.name,
                                                      self.settings.lease_s)
            if traceparent is not None:
                return _Job(tenant_id, run_id, shard, traceparent)
        return None

    async def _execute(self, job: _Job) -> None:
        renewing = asyncio.create_task(self._renew(job))
        current = self._current = asyncio.create_task(self._traced(job))
        try:
            await current
            self.stats.executed += 1
            self._failures = 0
        except asyncio.CancelledError:
            current.cancel()
            await self._release(job)
            if not self._stop.is_set():
                raise
        except Exception:  # noqa: BLE001 - the database away, say: given back and retried
            log.exception("billing run shard execution failed", extra={"run_id": str(job.run_id)})
            await self._release(job)
            await self._back_off()
        finally:
            self._current = None
            renewing.cancel()

    async def _traced(self, job: _Job) -> None:
        """One span per execution (`billing run`), a child of the trace that asked for the run."""
        headers = {"traceparent": job.traceparent.encode()} if job.traceparent else {}
        span = tracing.start_message_span("billing run", headers, attributes={
            "billing.tenant_id": str(job.tenant_id), "billing.run_id": str(job.run_id),
            "billing.run_shard": job.shard})
        token = current_tenant.set(str(job.tenant_id))
        try:
            with trace.use_span(span, end_on_exit=True):
                run = await run_execution.execute_run(
                    self.db, job.tenant_id, job.run_id, shard=job.shard, executor=self.name,
                    chunk_size=self.settings.chunk_size, workers=self.settings.workers)
                span.set_attribute("billing.run_status", run.status if run else "")
        finally:
            current_tenant.reset(token)

    async def _renew(self, job: _Job) -> None:
        while True:
            await asyncio.sleep(self.settings.renew_s)
            try:
                async with self.db.tenant_tx(job.tenant_id) as conn:
                    await store.renew_lease(conn, job.tenant_id, job.run_id, job.shard, self.name,
                                            self.settings.lease_s)
            except Exception as exc:  # noqa: BLE001 - the lease may run out: another execution is safe
                log.warning("renewing a billing run shard's lease failed: %s", exc)

    async def _release(self, job: _Job) -> None:
        try:
            async with self.db.tenant_tx(job.tenant_id) as conn:
                await store.release_lease(conn, job.tenant_id, job.run_id, job.shard, self.name)
        except Exception as exc:  # noqa: BLE001 - it runs out on its own
            log.warning("giving back a billing run shard failed: %s", exc)

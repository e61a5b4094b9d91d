"""`billing serve`: every role of the service in one process, or the roles asked for.

Roles: `api` (the gRPC facade), `commands` (the subscription command consumer), `usage`
(the usage consumer), `billing` (the billing-run consumer), `scheduler` (starts billing
runs on a cadence and resumes paused subscriptions whose resume time has come), `relay`
(the outbox relay).
Each can run alone (`--roles commands`), so replicas scale out: the consumers by Kafka
partitions within their group, the relay as one leader with standbys.
Every process serves the HTTP side port (health, readiness, metrics) whatever its roles.
A role that fails (a consumer that met too many bad messages, say) stops the process
with a non-zero exit, so the supervisor restarts it and the failure is visible.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass, field

from billing import bootstrap
from billing.api.server import GrpcServer
from billing.api.tls import ServerTls
from billing.config import Settings
from billing.ops import http
from billing.ops import tracing
from billing.ops.metrics import (
    OUTBOX_BACKLOG, OUTBOX_LEADER, OUTBOX_OLDEST_AGE, OUTBOX_PARKED_ROWS, ConsumerMetrics, outbox_delays,
    outbox_observer, outbox_parked, track_pool,
)
from billing.ops.readiness import Readiness, wait_for_migrations
from billing.ops.transport_checks import database_warnings, grpc_warning
from billing.store.db import Database
from billing.store.roles import open_databases

log = logging.getLogger(__name__)

ALL_ROLES = ("api", "commands", "usage", "billing", "scheduler", "relay")
KAFKA_ROLES = frozenset({"commands", "usage", "billing", "relay"})  # roles with Kafka clients
COMMANDS_GROUP = "billing-commands"
USAGE_GROUP = "billing-usage"
BILLING_GROUP = "billing-runs"
# Allocations between young-generation collections (default 700); see tune_gc.
GC_THRESHOLD_GEN0 = 200_000


@dataclass
class Service:
    settings: Settings
    roles: tuple[str, ...] = ALL_ROLES
    db: Database | None = None
    # The worker role's pool (consumers, scheduler, relay); `db` is the API role's, or this one
    # in a process without the api role (billing/store/roles.py).
    worker_db: Database | None = None
    grpc: GrpcServer | None = None
    readiness: Readiness | None = None
    components: bootstrap.Components | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _roles: list[tuple[str, object, asyncio.Task]] = field(default_factory=list)
    _http_runner: object | None = None
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when every migration is applied (or on stop): no role starts before (wait_for_migrations).
    _schema_current: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    async def start(self) -> None:
        s = self.settings
        unknown = set(self.roles) - set(ALL_ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; known: {', '.join(ALL_ROLES)}")
        tracing.configure(s)
        for warning in database_warnings(s):
            log.warning(warning)
        if set(self.roles) & KAFKA_ROLES:  # refuse topics below the replication settings
            from billing.kafka_topics import check_at_start

            await asyncio.to_thread(check_at_start, s)
        self.components = app = bootstrap.build(s)
        self.db, self.worker_db = await open_databases(s, self.roles)
        track_pool(self.db.pool)
        from billing.kafka import admin_config

        self.readiness = Readiness(self.db, s.kafka_bootstrap_servers, s.migrations_dir,
                                   required_topics=tuple(s.topics.all()), check_kafka=s.readiness_requires_kafka,
                                   kafka_config=admin_config(s))
        self._tasks.append(asyncio.create_task(self._wait_for_schema(), name="wait-for-migrations"))
        if "api" in self.roles:
            self.grpc = GrpcServer(self.db, s.grpc_host, s.grpc_port, tls=ServerTls.from_settings(s),
                                   max_concurrent_calls=s.grpc_max_concurrent_calls, usage=app.usage,
                                   run_shards=app.runs.shards, page_tokens=app.page_tokens,
                                   api_key_cache_ttl_s=s.api_key_cache_ttl_s, reuse_port=s.grpc_processes > 1)
            if warning := grpc_warning(self.grpc.tls.mode, self.grpc.address):
                log.warning(warning)
            await self.grpc.start()
            await self.grpc.set_serving(False)
            self.readiness.listeners.append(
                lambda ready: asyncio.get_running_loop().create_task(self.grpc.set_serving(ready))
            )
        if "commands" in self.roles:
            self._start_consumer("commands", self._command_consumer())
        if "usage" in self.roles:
            self._start_consumer("usage", usage_consumer(s, self.worker_db.pool, components=app))
        if "billing" in self.roles:
            from billing.services.run_executor import RunExecutor

            executor = RunExecutor(self.worker_db)  # executes the shards the consumer records
            self._start_role("billing-executor", executor)
            self._start_consumer("billing", self._billing_consumer(executor.wake))
        if "scheduler" in self.roles and s.scheduler_interval_s > 0:
            from billing.services.scheduler import Scheduler

            # Each round resumes what is due before it requests the runs (unless auto-resume is off).
            resume_batch = s.auto_resume_batch_size if s.auto_resume_interval_s > 0 else 0
            self._start_role("scheduler", Scheduler(self.worker_db, s.scheduler_interval_s, resume_batch_size=resume_batch,
                                                    run_shards=app.runs.shards))
        if "scheduler" in self.roles and s.auto_resume_interval_s > 0:
            from billing.services.scheduler import AutoResumer

            self._start_role("auto-resume", AutoResumer(self.worker_db, s.auto_resume_interval_s,
                                                        s.auto_resume_batch_size))
        if "scheduler" in self.roles and s.partition_maintenance_interval_s > 0:
            from billing.services.scheduler import PartitionMaintainer

            self._start_role("partitions", PartitionMaintainer(self.worker_db, s.partition_maintenance_interval_s,
                                                               s.usage_partitions_ahead_months))
        if "relay" in self.roles:
            from producers.outbox_relay import OutboxRelay

            relay = OutboxRelay(pool=self.worker_db.pool, listen_dsn=s.worker_database_url, settings=s,
                                batch_size=s.relay_batch_size, max_in_flight=s.relay_max_in_flight,
                                on_published=outbox_observer, on_delivered=outbox_delays,
                                on_parked=outbox_parked)
            self._start_role("relay", relay)
            self._tasks.append(asyncio.create_task(self._sample_outbox(relay), name="outbox-gauges"))
        await self.readiness.check_once()
        self._tasks.append(asyncio.create_task(self.readiness.run(), name="readiness"))
        self._http_runner = await http.start(self.readiness, s.http_host, s.http_port)
        log.info("service started", extra={
            "roles": list(self.roles), "grpc": self.grpc.address if self.grpc else None,
            "grpc_tls": self.grpc.tls.mode if self.grpc else None,
            "http": f"{s.http_host}:{s.http_port}", "ready": self.readiness.ready,
        })

    def _command_consumer(self):
        from consumers.commands import CommandStrategy

        s = self.settings
        return consumer_runner(s, self.worker_db.pool, COMMANDS_GROUP, s.topics.subscription_commands,
                               s.topics.subscription_commands_dlq, CommandStrategy(), max_batch_size=500)

    def _billing_consumer(self, on_recorded):
        from consumers.billing import BillingRunStrategy

        s = self.settings
        # Each message records a shard for the executor: the batch commits at once.
        return consumer_runner(s, self.worker_db.pool, BILLING_GROUP, s.topics.billing_runs,
                               s.topics.billing_runs_dlq, BillingRunStrategy(on_recorded), max_batch_size=10)

    async def _sample_outbox(self, relay) -> None:
        """The outbox gauges, every `outbox_backlog_interval_s`, from every relay process (leader
        or standby: the backlog is the same from all; aggregate with max())."""
        from producers.outbox_relay import backlog, oldest_pending_age_s, parked

        while True:
            OUTBOX_LEADER.set(1 if relay.is_leader else 0)
            try:
                # One snapshot for the three, set together: a scrape must never see a backlog
                # of 0 beside the age of a row sampled a moment earlier (or the reverse).
                async with self.worker_db.pool.acquire() as conn, \
                        conn.transaction(isolation="repeatable_read", readonly=True):
                    rows, age, parked_rows = await backlog(conn), await oldest_pending_age_s(conn), await parked(conn)
                OUTBOX_BACKLOG.set(rows)
                OUTBOX_OLDEST_AGE.set(age)
                OUTBOX_PARKED_ROWS.set(parked_rows)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: readiness says so; keep sampling
                log.debug("outbox gauges not sampled: %s", exc)
            await asyncio.sleep(self.settings.outbox_backlog_interval_s)

    async def _wait_for_schema(self) -> None:
        await wait_for_migrations(self.db, self.settings.migrations_dir, self.readiness.interval_s)
        self._schema_current.set()

    def _start_consumer(self, name: str, runner) -> None:
        """A consumer role; readiness checks that its assigned partitions have a leader."""
        self._start_role(name, runner)
        self.readiness.assignments.append(lambda: runner.assignment)

    def _start_role(self, name: str, component) -> None:
        async def run() -> None:
            try:
                await self._schema_current.wait()
                if self._stopping:
                    return
                await component.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("role failed", extra={"role": name})
                self.failed.set()

        self._roles.append((name, component, asyncio.create_task(run(), name=name)))

    async def drain(self) -> None:
        """Not ready (/readyz and gRPC health), still answering, for `shutdown_drain_s`: the
        load balancers and clients watching health stop sending before the port closes."""
        if self.readiness:
            self.readiness.drain()
        if self.grpc:
            await self.grpc.drain()
            if self.settings.shutdown_drain_s > 0:
                log.info("draining", extra={"drain_s": self.settings.shutdown_drain_s})
                await asyncio.sleep(self.settings.shutdown_drain_s)

    async def stop(self) -> None:
        """Graceful: stop taking calls and messages, let in-flight work finish, close the pool."""
        self._stopping = True
        self._schema_current.set()  # roles still waiting for migrations end without starting
        if self.grpc:
            await self.grpc.drain()
            await self.grpc.stop(grace_s=self.settings.shutdown_grace_s)
        for _, component, _ in self._roles:
            component.stop()
        done = await asyncio.gather(*(asyncio.wait_for(t, 30) for _, _, t in self._roles), return_exceptions=True)
        for (name, _, _), outcome in zip(self._roles, done):
            if isinstance(outcome, Exception):
                log.warning("role did not stop cleanly", extra={"role": name, "error": repr(outcome)})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http_runner:
            await self._http_runner.cleanup()
        if self.readiness:
            await self.readiness.close()
        for db in {id(d): d for d in (self.db, self.worker_db) if d}.values():
            await db.close()
        tracing.shutdown()
        log.info("service stopped")


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    A consumer batch allocates hundreds of thousands of short-lived, acyclic objects
    (messages, tuples, dicts) that reference counting frees on its own; at the default gen-0
    threshold the collector runs constantly (docs/usage.md, Throughput). Freeze what start-up
    built, so full collections never walk it, and collect young objects far less often: a
    consumer holds up to three batches in flight (fetched, being decoded ahead, being
    stored), and a young generation smaller than that keeps moving live batches into the
    older generations, which then get collected over and over (docs/usage.md, the consumer's third pass).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_GEN0, 20, 20)


async def serve(settings: Settings, roles: tuple[str, ...] = ALL_ROLES, api_process: int = 0) -> int:
    """Run until SIGTERM/SIGINT (drain, then exit 0) or until a role fails (exit 1, no drain:
    the process is broken, not being replaced). `api_process`: 0 for the process `billing
    serve` starts, which starts the others of BILLING_GRPC_PROCESSES; i for those."""
    service = Service(settings, roles)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    extra = None
    if "api" in roles and settings.grpc_processes > 1 and not api_process:
        from billing.api_processes import ApiProcesses

        extra = ApiProcesses(settings)  # the other API processes on the port (BILLING_GRPC_PROCESSES)
        extra.start()
        service._tasks.append(asyncio.create_task(extra.watch(service.failed), name="api-processes"))
    tune_gc()
    try:
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(service.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
        if extra is not None:
            extra.terminate()  # they drain in parallel with this one
        if stop.is_set() and not service.failed.is_set():
            await service.drain()
    finally:
        await service.stop()
        if extra is not None:
            await extra.wait(settings.shutdown_drain_s + settings.shutdown_grace_s + 30)
    return 1 if service.failed.is_set() else 0


def consumer_runner(settings: Settings, pool, group: str, topic: str, dlq_topic: str, strategy, *,
                    max_batch_size: int, max_batch_wait_s: float = 0.2, dlq_limit=None):
    """A consumer role's runner: its settings built once, as value objects."""
    from billing.kafka import consumer_config, producer_config
    from consumers.runner import Batching, ConsumerRunner, ConsumerSource, DeadLetterPolicy, DlqLimit

    return ConsumerRunner(
        pool, ConsumerSource(consumer_config(settings, group), (topic,), group), strategy,
        batching=Batching(max_batch_size, max_batch_wait_s, settings.kafka_max_message_bytes),
        dead_letters=DeadLetterPolicy(dlq_topic, producer_config(settings), limit=dlq_limit or DlqLimit()),
        observer=ConsumerMetrics(group, getattr(strategy, "dead_letter_reasons", ())),
    )


def usage_consumer(settings: Settings, pool, components: bootstrap.Components | None = None, *,
                   group_id: str = USAGE_GROUP, max_batch_wait_s: float | None = None):
    """The usage consumer as configured; `components`: what it shares with the process's
    other roles (billing/bootstrap.py); the batch wait BILLING_USAGE_BATCH_WAIT_MS unless given.
    Tests name their own group and a shorter wait."""
    from consumers.runner import DlqLimit
    from consumers.usage import UsageStrategy

    app = components or bootstrap.build(settings)
    return consumer_runner(settings, pool, group_id, settings.topics.usage, settings.topics.usage_dlq,
                           UsageStrategy(app.usage_limits, app.plans), max_batch_size=settings.usage_batch_size,
                           max_batch_wait_s=max_batch_wait_s or settings.usage_batch_wait_ms / 1000,
                           dlq_limit=DlqLimit(settings.usage_max_bad_share))

"""What 'ready' means: PostgreSQL reachable, every migration applied, Kafka reachable (and
the service's topics there, with a leader for every partition this process consumes), and
the process not draining for shutdown.

Checked in the background every few seconds, so /readyz and the gRPC health service
answer at once from the last result rather than probing on every request. Each check is
bounded by `timeout_s`, so an unreachable dependency turns the process not-ready within
`interval_s + timeout_s`, and ready again within `interval_s` of its return. Liveness
(/healthz) never depends on these: a process that waits for its dependencies is alive.

PostgreSQL is checked on a connection of the check's own, never one of the request pool:
a pool fully held by a burst of calls is busy, not unreachable.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import asyncpg
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from billing.ops.metrics import DEPENDENCY_UP, READY
from billing.store import migrations
from billing.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    db: Database
    kafka_bootstrap: str
    migrations_dir: Path
    interval_s: float = 2.0
    required_topics: tuple[str, ...] = ()
    timeout_s: float = 3.0
    check_kafka: bool = True  # False: Kafka is reported "not required" and never makes it unready
    export_metrics: bool = True  # billing_ready / billing_dependency_up (off for a second, ad hoc instance)
    checks: dict[str, str] = field(default_factory=dict)  # dependency -> "ok" or why not
    listeners: list[Callable[[bool], None]] = field(default_factory=list)
    # The (topic, partition) pairs each consumer role of the process holds (ConsumerRunner.assignment).
    assignments: list[Callable[[], Iterable[tuple[str, int]]]] = field(default_factory=list)
    dsn: str | None = None  # the check's own connection; default: the URL the pool was opened with
    # The admin client's configuration (billing.kafka.admin_config: security settings and
    # all); None: just bootstrap.servers = kafka_bootstrap.
    kafka_config: dict | None = None
    _ready: bool = False
    _draining: bool = False
    _conn: asyncpg.Connection | None = None
    # The admin client of the last check that reached Kafka, kept while Kafka answers: a new
    # client per check is a new connection (a TLS and SASL handshake on a secured cluster)
    # and its threads every few seconds. Any failure drops it; the next check starts afresh.
    _admin: AdminClient | None = None
    _refused: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self._ready

    async def check_once(self) -> bool:
        assigned = {tp for source in self.assignments for tp in source()}
        kafka_check = asyncio.to_thread(self._check_kafka, assigned) if self.check_kafka else _not_required()
        results = await asyncio.gather(self._check_postgres(), kafka_check, return_exceptions=True)
        pg = results[0] if not isinstance(results[0], BaseException) else (f"check failed: {results[0]!r}", "unknown")
        kafka = results[1] if not isinstance(results[1], BaseException) else f"check failed: {results[1]!r}"
        checks = {"postgres": pg[0], "migrations": pg[1], "kafka": kafka}
        if kafka.startswith("authentication failed") and kafka != self.checks.get("kafka"):
            # A configuration error, not an outage: said at once, whatever else is pending.
            log.error("Kafka refused the login; check BILLING_KAFKA_CONFIG (sasl.*, ssl.*)", extra={"reason": kafka})
        for name, state in checks.items():
            if self.export_metrics and state != "not required":
                DEPENDENCY_UP.labels(name).set(1 if state == "ok" else 0)
        ready = all(v in ("ok", "not required") for v in checks.values())
        if self._draining:
            checks["shutdown"] = "draining"
            ready = False
        self.checks = checks
        self._set(ready)
        return ready

    def drain(self) -> None:
        """Not ready for good (SIGTERM): the load balancer stops sending while calls in hand finish."""
        self._draining = True
        self.checks = {**self.checks, "shutdown": "draining"}
        self._set(False)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    def _set(self, ready: bool) -> None:
        if ready != self._ready:
            log.log(logging.INFO if ready else logging.WARNING, "readiness changed",
                    extra={"ready": ready, "checks": self.checks})
            self._ready = ready
            for listener in self.listeners:
                listener(ready)
        if self.export_metrics:
            READY.set(1 if ready else 0)

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - a broken check means not ready, never a dead loop
                log.exception("readiness check failed")
                self._set(False)
            await asyncio.sleep(self.interval_s)

    async def _check_postgres(self) -> tuple[str, str]:
        try:
            migrations.load_migrations(self.migrations_dir)
        except migrations.MigrationError as exc:  # never "ok" without the files to compare with
            return await self._check_postgres_only(), f"broken: {exc}"
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.dsn or self.db.url)
                todo = await migrations.pending(self._conn, self.migrations_dir)
        except Exception as exc:  # noqa: BLE001 - a connection cut mid-check is not reused
            await self.close()
            return f"unreachable: {type(exc).__name__}", "unknown"
        return "ok", ("ok" if not todo else f"pending: {', '.join(todo)}")

    async def _check_postgres_only(self) -> str:
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.dsn or self.db.url)
                await self._conn.fetchval("select 1")
        except Exception as exc:  # noqa: BLE001
            await self.close()
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    def _check_kafka(self, assigned: set[tuple[str, int]]) -> str:  # in a worker thread: the admin client blocks
        # A refused login (wrong SASL password, bad certificate) only shows as a transport
        # failure of list_topics; the error callback hears the reason, and /readyz says it.
        # list_topics asks a broker every time (never a cached answer), so a kept client
        # sees a partition lose its leader as a new one would.
        admin = self._admin if self._admin is not None else self._new_admin()
        try:
            metadata = admin.list_topics(timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            admin.poll(0)  # serves the error callback
            self._admin = None
            if self._refused:
                return f"authentication failed: {self._refused[-1]}"
            return f"unreachable: {type(exc).__name__}"
        admin.poll(0)  # a kept client's queued callbacks: served, and forgotten while Kafka answers
        self._refused.clear()
        self._admin = admin
        if not metadata.brokers:
            return "no brokers"
        missing = [t for t in self.required_topics if t not in metadata.topics]
        if missing:
            return f"missing topics: {', '.join(missing)}"
        return leader_check(metadata.topics, assigned)


    def _new_admin(self) -> AdminClient:
        base = self.kafka_config if self.kafka_config is not None else {"bootstrap.servers": self.kafka_bootstrap}
        refused: list[str] = []
        self._refused = refused

        def on_error(err) -> None:
            if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
                refused.append(err.str())

        return AdminClient({**base, "log_level": 0, "socket.timeout.ms": 2000, "error_cb": on_error})


def leader_check(topics: Mapping[str, object], assigned: Iterable[tuple[str, int]]) -> str:
    """"ok", or which assigned partitions have no leader (metadata leader -1, or the partition
    absent from the metadata): the consumer holding them fetches nothing until one is elected,
    so its process is not ready. `topics`: AdminClient.list_topics().topics."""
    leaderless: dict[str, list[int]] = {}
    for topic, partition in sorted(assigned):
        meta = topics.get(topic)
        part = meta.partitions.get(partition) if meta is not None else None
        if part is None or part.leader < 0:
            leaderless.setdefault(topic, []).append(partition)
    if not leaderless:
        return "ok"
    return "no leader for " + "; ".join(f"{t} partitions {', '.join(map(str, ps))}" for t, ps in leaderless.items())


async def wait_for_migrations(db: Database, migrations_dir: Path, interval_s: float = 2.0) -> None:
    """Return once every migration of `migrations_dir` is applied. The roles of a process wait
    on this before they consume or write anything: new code may rely on what a pending
    migration adds (015: the trigger that records late usage still to bill), so a replica
    deployed before `billing migrate` must not store a message meanwhile. PostgreSQL away:
    retried, like a pending migration."""
    warned = False
    while True:
        try:
            async with db.pool.acquire() as conn:
                todo = await migrations.pending(conn, migrations_dir)
        except Exception as exc:  # noqa: BLE001 - unreachable now, retried
            todo = [f"(not checked: {type(exc).__name__})"]
        if not todo:
            return
        if not warned:
            log.warning("roles wait for migrations", extra={"pending": todo})
            warned = True
        await asyncio.sleep(interval_s)


async def _not_required() -> str:
    return "not required"

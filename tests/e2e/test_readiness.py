"""Readiness under outages, against a `billing serve` process and a PostgreSQL and Kafka of this
module's own (so stopping them disturbs no other test).

Stop PostgreSQL, then Kafka, under the running service: /readyz and the gRPC health service
go not-ready (liveness stays up), come back when the dependency returns, and what arrived
meanwhile (commands and usage produced, calls made) is processed afterwards, nothing lost.
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import timezone
from decimal import Decimal

import asyncpg
import grpc
import pytest
from confluent_kafka import Producer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing.config import Settings
from billing.devstack import LocalStack, free_port
from billing.kafka import ensure_topics, producer_config
from billing.services.usage import to_us
from billing.store.migrations import migrate
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.e2e.test_process import _billing, _env
from tests.http_probe import get_json
from tests.integration.test_plans_api import plan_request
from tests.integration.test_usage_consumer import avro
from tests.kafka_helpers import TopicReader, command, produce

pytestmark = pytest.mark.timeout(600)

OUTAGES: set[str] = set()  # the outages this run went through (the log test checks they were logged)


@pytest.fixture(scope="module")
async def own_stack(tmp_path_factory):
    base = Settings()
    stack = LocalStack.create(tmp_path_factory.mktemp("outage-stack"), pg_port=free_port(), kafka_port=free_port(),
                              controller_port=free_port(), kafka_version=base.kafka_version,
                              kafka_cache_dir=base.kafka_cache_dir)
    await asyncio.to_thread(stack.start, 180)
    try:
        env = {k.removeprefix("BILLING_").lower(): v for k, v in stack.env().items()}
        settings = Settings(**env)
        await migrate(settings.admin_database_url, settings.migrations_dir)
        await asyncio.to_thread(ensure_topics, settings)
        yield stack, settings
    finally:
        await asyncio.to_thread(stack.stop)


class Served:
    def __init__(self, settings: Settings, tmp_path):
        self.settings = settings
        self.grpc_port, self.http_port = free_port(), free_port()
        self.env = _env(settings, BILLING_GRPC_PORT=str(self.grpc_port), BILLING_HTTP_PORT=str(self.http_port),
                        BILLING_OUTBOX_BACKLOG_INTERVAL_S="1")
        self.log_path = tmp_path / "serve.log"
        created = _billing("tenants", "create", "outage", env=self.env)
        assert created.returncode == 0, created.stderr
        self.tenant = json.loads(created.stdout)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = billing_pb2_grpc.BillingServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {self.tenant['api_key']}"),)

    def http(self, path: str) -> tuple[int, dict | None]:
        return get_json(f"http://127.0.0.1:{self.http_port}{path}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def health(self) -> int | None:
        try:
            return health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service="billing.v1.BillingService"), timeout=3).status
        except grpc.RpcError:
            return None

    def wait_readiness(self, ready: bool, timeout_s: float = 90) -> dict:
        deadline = time.monotonic() + timeout_s
        want_health = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        status = body = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the service exited: {self.log_path.read_text()[-3000:]}"
            status, body = self.http("/readyz")
            if status == (200 if ready else 503) and self.health() == want_health:
                return body
            time.sleep(0.5)
        raise AssertionError(f"readiness never became {ready}: {status} {body}")

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
async def served(own_stack, tmp_path_factory):
    _, settings = own_stack
    svc = await asyncio.to_thread(Served, settings, tmp_path_factory.mktemp("served"))
    try:
        await asyncio.to_thread(svc.wait_readiness, True, 120)
        yield svc
    finally:
        await asyncio.to_thread(svc.stop)


def _subscription(svc: Served) -> pb.Subscription:
    plan = svc.stub.CreatePlan(plan_request(trial_days=0, usage_charges=[pb.UsageCharge(
        metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
        unit_price="0.01")]), metadata=svc.md).plan
    return svc.stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=str(uuid.uuid4()), customer_id="c", plan_id=plan.id, activate=True), metadata=svc.md).subscription


def _usage(svc: Served, sub: pb.Subscription, n: int, prefix: str) -> list[tuple[str, bytes]]:
    at = to_us(sub.start_at.ToDatetime(timezone.utc)) + 1_000_000
    return [(sub.id, avro(svc.tenant["tenant_id"], sub.id, "1", at + i, event_id=f"{prefix}-{i}")) for i in range(n)]


async def _wait_db(settings: Settings, query: str, *args, expect, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(settings.admin_database_url)
            try:
                last = await conn.fetchval(query, *args)
            finally:
                await conn.close()
            if last == expect:
                return
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"{query} -> {last!r}, expected {expect!r}")


def _event_published(settings: Settings, sub_id: str, event_type: str) -> None:
    reader = TopicReader(settings, settings.topics.subscription_events)
    try:
        reader.until(lambda ms: any(m.key() == sub_id.encode()
                                    and dict(m.headers() or []).get("event-type") == event_type.encode()
                                    for m in ms), timeout_s=120)
    finally:
        reader.close()


async def test_postgres_outage(own_stack, served):
    stack, settings = own_stack
    sub = await asyncio.to_thread(_subscription, served)
    await asyncio.to_thread(stack.postgres.stop)
    try:
        body = await asyncio.to_thread(served.wait_readiness, False, 30)
        assert body["checks"]["postgres"] != "ok" and body["checks"]["kafka"] == "ok"
        assert served.http("/healthz")[0] == 200  # alive, only not ready
        text = served.metrics()  # and it says so on /metrics
        assert "billing_ready 0.0" in text and 'billing_dependency_up{dependency="postgres"} 0.0' in text
        # what arrives meanwhile waits in Kafka
        pause = command(served.tenant["tenant_id"], sub.id, "PauseSubscription", {"resumes_at_us": None})
        await asyncio.to_thread(produce, settings, settings.topics.subscription_commands, [(sub.id, pause)])
        await asyncio.to_thread(produce, settings, settings.topics.usage, _usage(served, sub, 50, "pg-outage"))
        await asyncio.sleep(3)  # the consumers meet the outage and back off
    finally:
        await asyncio.to_thread(stack.postgres.start)
    body = await asyncio.to_thread(served.wait_readiness, True, 60)
    assert body["checks"] == {"postgres": "ok", "migrations": "ok", "kafka": "ok"}
    await _wait_db(settings, "select quantity_sum from usage_totals where subscription_id = $1", uuid.UUID(sub.id),
                   expect=Decimal(50))
    text = served.metrics()
    assert "billing_ready 1.0" in text
    lag = [line for line in text.splitlines() if line.startswith('billing_consumer_lag_messages{group="billing-usage"')]
    assert len(lag) == settings.kafka_partitions
    await _wait_db(settings, "select status from subscriptions where id = $1", uuid.UUID(sub.id), expect="paused")
    await asyncio.to_thread(_event_published, settings, sub.id, "subscription.paused")
    assert served.proc.poll() is None
    OUTAGES.add("postgres")


async def test_kafka_outage(own_stack, served):
    stack, settings = own_stack
    sub = await asyncio.to_thread(_subscription, served)
    await asyncio.to_thread(stack.kafka.stop)
    producer = Producer(producer_config(settings))  # buffers until the broker returns
    try:
        body = await asyncio.to_thread(served.wait_readiness, False, 30)
        assert body["checks"]["kafka"] != "ok" and body["checks"]["postgres"] == "ok"
        assert served.http("/healthz")[0] == 200
        # the API still takes calls (PostgreSQL is up); their events wait in the outbox
        served.stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=str(uuid.uuid4()), id=sub.id),
                                      metadata=served.md)
        for key, value in _usage(served, sub, 40, "kafka-outage"):
            producer.produce(settings.topics.usage, key=key, value=value)
        producer.poll(0)
        await asyncio.sleep(3)
    finally:
        await asyncio.to_thread(stack.kafka.start, 180)
    assert await asyncio.to_thread(producer.flush, 120) == 0
    body = await asyncio.to_thread(served.wait_readiness, True, 90)
    assert body["checks"] == {"postgres": "ok", "migrations": "ok", "kafka": "ok"}
    await _wait_db(settings, "select quantity_sum from usage_totals where subscription_id = $1", uuid.UUID(sub.id),
                   expect=Decimal(40))
    await _wait_db(settings, "select count(*) from outbox where tenant_id = $1 and published_at is null",
                   uuid.UUID(served.tenant["tenant_id"]), expect=0)
    await asyncio.to_thread(_event_published, settings, sub.id, "subscription.paused")
    assert served.proc.poll() is None
    OUTAGES.add("kafka")


async def test_pending_migrations_mean_not_ready(own_stack, tmp_path):
    """A migration file the database has not applied (a new version deployed before `migrate`)."""
    from billing.ops.readiness import Readiness
    from billing.store.db import Database

    _, settings = own_stack
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for path in settings.migrations_dir.glob("*.sql"):
        (migrations / path.name).write_text(path.read_text())
    (migrations / "999_next.sql").write_text("select 1;")

    db = await Database.connect(settings.database_url, min_size=1, max_size=2)
    readiness = Readiness(db, settings.kafka_bootstrap_servers, migrations, export_metrics=False)
    try:
        assert await readiness.check_once() is False
        assert readiness.checks["migrations"] == "pending: 999_next.sql"
        (migrations / "999_next.sql").unlink()
        assert await readiness.check_once() is True
    finally:
        await readiness.close()
        await db.close()


async def test_the_service_log_tells_the_outages_and_holds_no_api_key(served):
    """Runs after the outages above: the process's own log (JSON lines on stderr)."""
    # one refused call, with a key that looks real
    try:
        served.stub.ListPlans(pb.ListPlansRequest(), metadata=(("authorization", "Bearer bk_" + "x" * 43),))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    await asyncio.sleep(0.5)
    text = served.log_path.read_text()
    assert served.tenant["api_key"] not in text and "bk_" + "x" * 43 not in text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    # librdkafka's complaints during the Kafka outage came through logging, as JSON too
    assert not [line for line in text.splitlines() if line.startswith("%")]
    if "kafka" in OUTAGES:
        assert any(r["logger"] == "librdkafka" for r in records)
    changes = [(r["ready"], r["checks"]) for r in records if r["msg"] == "readiness changed"]
    if "postgres" in OUTAGES:
        assert any(not ready and checks["postgres"] != "ok" and checks["kafka"] == "ok" for ready, checks in changes)
    if "kafka" in OUTAGES:
        assert any(not ready and checks["kafka"] != "ok" for ready, checks in changes)
    assert changes[-1][0] is True
    assert any(r["msg"] == "unauthenticated call refused" for r in records)

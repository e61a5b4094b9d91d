"""Test infrastructure: real PostgreSQL and real Kafka, started once per session on free ports.

Nothing is mocked: the stack is the same `billing.devstack` that `make run` uses, in a
temporary state directory, so a running `make run` and the test suite never collide.
Set BILLING_TEST_DATABASE_URL, BILLING_TEST_WORKER_DATABASE_URL, BILLING_TEST_ADMIN_DATABASE_URL
and BILLING_TEST_KAFKA_BOOTSTRAP_SERVERS to run against servers of your own instead
(BILLING_TEST_KAFKA_REPLICATION_FACTOR / _MIN_INSYNC_REPLICAS: 1 unless set), and
BILLING_TEST_SCHEMA_REGISTRY_URL for a schema registry of your own (Confluent API).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A developer's local stack (`billing dev` writes .state/env, which Settings reads when
# present) must never reach the suite: its settings are explicit, and this turns the file
# off for every Settings() here and in every process the tests start (they inherit it).
os.environ["BILLING_ENV_FILE"] = ""

from billing.config import Settings  # noqa: E402
from billing.devstack import LocalStack, free_port


# BILLING_TEST_EVENT_LOOP=uvloop runs the in-process async tests on libuv's loop, the default
# loop of `billing serve` (the processes the e2e tests start use it already). Defined only
# then: pytest-asyncio (1.5 on) wants a loop from the hook whenever the hook exists.
if os.environ.get("BILLING_TEST_EVENT_LOOP", "asyncio") == "uvloop":
    @pytest.hookimpl(optionalhook=True)
    def pytest_asyncio_loop_factories(config, item):
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config):
    # SIGTERM (a CI timeout, `kill`) ends the session like Ctrl-C, so the session's
    # teardown stops the PostgreSQL and Kafka it started instead of leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if os.environ.get("BILLING_TEST_DATABASE_URL"):
        yield None
        return
    settings = Settings()
    local = LocalStack.create(
        tmp_path_factory.mktemp("stack"), pg_port=free_port(), kafka_port=free_port(),
        controller_port=free_port(), kafka_version=settings.kafka_version, kafka_cache_dir=settings.kafka_cache_dir,
    )
    local.start(timeout_s=120)
    yield local
    local.stop()


@pytest.fixture(scope="session")
def settings(stack) -> Settings:
    if stack is None:
        env = {
            "database_url": os.environ["BILLING_TEST_DATABASE_URL"],
            "worker_database_url": os.environ["BILLING_TEST_WORKER_DATABASE_URL"],
            "admin_database_url": os.environ["BILLING_TEST_ADMIN_DATABASE_URL"],
            "kafka_bootstrap_servers": os.environ["BILLING_TEST_KAFKA_BOOTSTRAP_SERVERS"],
            # Like the local stack (one broker) unless told otherwise.
            "kafka_replication_factor": os.environ.get("BILLING_TEST_KAFKA_REPLICATION_FACTOR", "1"),
            "kafka_min_insync_replicas": os.environ.get("BILLING_TEST_KAFKA_MIN_INSYNC_REPLICAS", "1"),
        }
    else:
        env = {k.removeprefix("BILLING_").lower(): v for k, v in stack.env().items()}
    return Settings(**env, grpc_port=0, http_port=free_port(), db_pool_min=1, db_pool_max=8)


@pytest.fixture(scope="session")
def schema_registry(settings, tmp_path_factory) -> str:
    """The URL of a real registry with the Confluent API: BILLING_TEST_SCHEMA_REGISTRY_URL, or
    Apicurio Registry started here (billing/devstack/registry.py; built with Maven once)."""
    url = os.environ.get("BILLING_TEST_SCHEMA_REGISTRY_URL")
    if url:
        yield url
        return
    from billing.devstack import LocalSchemaRegistry

    registry = LocalSchemaRegistry(tmp_path_factory.mktemp("registry"), free_port(), settings.kafka_cache_dir)
    registry.start(timeout_s=180)
    yield registry.url
    registry.stop()


@pytest.fixture(scope="session")
async def migrated(settings) -> Settings:
    from billing.store.migrations import migrate

    from billing.kafka import ensure_topics

    await migrate(settings.admin_database_url, settings.migrations_dir)
    ensure_topics(settings)
    return settings


@pytest.fixture(scope="session")
async def admin_conn(migrated):
    import asyncpg

    from billing.store.db import init_connection

    conn = await asyncpg.connect(migrated.admin_database_url)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def service(migrated):
    """The gRPC facade running in this process, on real sockets. The Kafka roles (commands,
    relay) run in the fixtures of the tests that need them, so they never compete."""
    from billing.runtime import Service

    svc = Service(migrated, roles=("api",))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture(scope="session")
async def worker_db(migrated):
    """A pool as the worker role (consumers, scheduler, relay, run executor): it may enter any tenant."""
    from billing.store.db import Database

    db = await Database.connect(migrated.worker_database_url, min_size=1, max_size=4)
    yield db
    await db.close()


@pytest.fixture(scope="session")
async def channel(service):
    import grpc

    async with grpc.aio.insecure_channel(service.grpc.address) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    from billing.v1 import billing_pb2_grpc

    return billing_pb2_grpc.BillingServiceStub(channel)


class Tenant:
    def __init__(self, tenant_id: str, api_key: str, api_key_id: str):
        self.id = tenant_id
        self.api_key = api_key
        self.api_key_id = api_key_id

    @property
    def md(self) -> tuple:
        """gRPC call metadata carrying this tenant's API key."""
        return (("authorization", f"Bearer {self.api_key}"),)


@pytest.fixture
async def new_tenant(admin_conn):
    """A factory: every call creates a fresh tenant with its own API key."""
    from billing.services.tenants import create_tenant

    counter = iter(range(1_000_000))

    async def make(name: str | None = None) -> Tenant:
        t = await create_tenant(admin_conn, name or f"tenant-{next(counter)}")
        return Tenant(str(t.tenant_id), t.api_key, str(t.api_key_id))

    return make


@pytest.fixture
async def tenant(new_tenant) -> Tenant:
    return await new_tenant()


PROJECT_ROOT = Path(__file__).resolve().parent.parent

"""bench/billing's outbox relay: a `billing serve --roles relay` process of its own, and the
wait for a run's invoice requests to be on their topic."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from billing.config import Settings
from billing.devstack import free_port
from billing.kafka import ensure_topics


class RelayProcess:
    def __init__(self, proc: subprocess.Popen, settings: Settings):
        self.proc = proc
        self.pid = proc.pid
        self.settings = settings

    @classmethod
    def start(cls, settings: Settings) -> "RelayProcess":
        ensure_topics(settings)
        env = {**os.environ, "BILLING_DATABASE_URL": settings.database_url,
               "BILLING_WORKER_DATABASE_URL": settings.worker_database_url,
               "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url,
               "BILLING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
               "BILLING_KAFKA_REPLICATION_FACTOR": str(settings.kafka_replication_factor),
               "BILLING_KAFKA_MIN_INSYNC_REPLICAS": str(settings.kafka_min_insync_replicas),
               "BILLING_HTTP_PORT": str(free_port()), "BILLING_LOG_LEVEL": "WARNING",
               **{k: v for k, v in os.environ.items() if k.startswith("BILLING_RELAY_")}}
        proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "relay"], env=env,
                                stdout=subprocess.DEVNULL,
                                stderr=open(Path(tempfile.gettempdir()) / "bench-billing-relay.log", "w"))
        return cls(proc, settings)

    def published(self, probe: Consumer | None = None) -> int:
        """Messages on the invoice-requests topic (the sum of its high watermarks)."""
        topic = self.settings.topics.invoice_requests
        c = probe or self.probe()
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in parts)
        finally:
            if probe is None:
                c.close()

    def probe(self) -> Consumer:
        return Consumer({"bootstrap.servers": self.settings.kafka_bootstrap_servers, "group.id": "bench-probe"})

    async def wait_published(self, db, tenant_id: uuid.UUID, started: float, timeout_s: float = 600) -> float:
        """Seconds from `started` until every invoice request of the tenant is on the topic
        (the bench's broker is its own: the topic holds this tenant's requests only)."""
        async with db.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("select set_config('billing.tenant_id', $1, true)", str(tenant_id))
                expected = await conn.fetchval(
                    "select count(*) from outbox where tenant_id = $1 and stream = 'invoice_requests'", tenant_id)
        deadline = time.monotonic() + timeout_s
        probe = self.probe()  # one client for every look: a new one per look takes longer than the look
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the relay exited with {self.proc.returncode}")
                if await asyncio.to_thread(self.published, probe) >= expected:
                    return time.perf_counter() - started
                await asyncio.sleep(0.02)
        finally:
            probe.close()
        raise RuntimeError(f"the relay did not publish {expected} invoice requests in {timeout_s} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

"""Readiness reads the partitions a consumer role of the process really holds and checks their
leaders in the broker's real metadata.

A partition without a leader cannot be made on a one-broker cluster (KRaft refuses a replica
assignment to a broker that is not registered), so the decision itself is unit-tested with
metadata built by hand (tests/unit/test_transport_checks.py); here the wiring: the service's
consumer role, its real assignment, the real metadata, and a partition that the metadata
does not know (no leader) named in /readyz.
"""
from __future__ import annotations

import asyncio
import uuid

import aiohttp
from confluent_kafka.admin import AdminClient, NewTopic

from billing.config import Topics
from billing.devstack import free_port
from billing.runtime import Service


def _new_topic(settings, partitions: int) -> str:
    name = f"readiness-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        future.result(30)
    return name


async def test_readiness_checks_the_leaders_of_the_partitions_the_consumer_role_holds(migrated):
    topic = await asyncio.to_thread(_new_topic, migrated, 3)
    topics = Topics(**{**migrated.topics.model_dump(), "billing_runs": topic})
    settings = migrated.model_copy(update={"topics": topics, "http_port": free_port(), "grpc_port": 0})
    svc = Service(settings, roles=("billing",))
    await svc.start()
    try:
        runner = next(component for name, component, _ in svc._roles if name == "billing")
        await asyncio.wait_for(runner.assigned.wait(), 60)
        held = {tp for source in svc.readiness.assignments for tp in source()}
        assert held == {(topic, 0), (topic, 1), (topic, 2)}
        assert await svc.readiness.check_once() is True
        assert svc.readiness.checks["kafka"] == "ok"

        # The same real metadata, one more assigned partition it has no leader for.
        svc.readiness.assignments.append(lambda: {(topic, 7)})
        assert await svc.readiness.check_once() is False
        assert svc.readiness.checks["kafka"] == f"no leader for {topic} partitions 7"
        url = f"http://{settings.http_host}:{settings.http_port}/readyz"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            body = await resp.json()
            assert resp.status == 503 and body["checks"]["kafka"] == f"no leader for {topic} partitions 7"
    finally:
        await svc.stop()

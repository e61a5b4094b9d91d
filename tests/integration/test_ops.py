"""Health, readiness and metrics on the HTTP side port; the standard gRPC health service."""
from __future__ import annotations

import re
import uuid

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request


def _http(service) -> str:
    return f"http://{service.settings.http_host}:{service.settings.http_port}"


async def test_healthz_and_readyz(service):
    async with aiohttp.ClientSession() as http:
        async with http.get(_http(service) + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(_http(service) + "/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body == {"ready": True, "checks": {"postgres": "ok", "migrations": "ok", "kafka": "ok"}}


async def test_grpc_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "billing.v1.BillingService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    async for resp in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
        names = {s.name for s in resp.list_services_response.service}
        assert "billing.v1.BillingService" in names
        break


def _sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            body = line[len(name) + 1:line.index("}")]
            got = dict(part.split("=", 1) for part in body.split(",") if part)
            if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_requests_by_method_and_code(service, stub, tenant):
    async with aiohttp.ClientSession() as http:
        async def scrape() -> str:
            async with http.get(_http(service) + "/metrics") as resp:
                return await resp.text()

        before = await scrape()
        await stub.CreatePlan(plan_request(), metadata=tenant.md)
        try:
            await stub.GetPlan(pb.GetPlanRequest(id=str(uuid.uuid4())), metadata=tenant.md)
        except grpc.aio.AioRpcError:
            pass
        after = await scrape()
    ok = "billing_grpc_requests_total"
    assert _sample(after, ok, method="CreatePlan", code="OK") - _sample(before, ok, method="CreatePlan", code="OK") == 1
    assert (_sample(after, ok, method="GetPlan", code="NOT_FOUND")
            - _sample(before, ok, method="GetPlan", code="NOT_FOUND")) == 1
    hist = "billing_grpc_request_duration_seconds_count"
    assert _sample(after, hist, method="CreatePlan") - _sample(before, hist, method="CreatePlan") == 1
    # no tenant label anywhere (a reason code such as "unknown_tenant" is a value, not an id)
    assert not re.search(r"[{,]tenant\w*=", after)


async def test_readiness_names_what_is_missing_and_kafka_can_be_left_out(migrated, service):
    """An unreachable Kafka or a missing topic is not ready; an api-only replica may leave
    Kafka out of its readiness (BILLING_READINESS_REQUIRES_KAFKA=false)."""
    from billing.devstack import free_port
    from billing.ops.readiness import Readiness

    nowhere = f"127.0.0.1:{free_port()}"
    down = Readiness(service.db, nowhere, migrated.migrations_dir, timeout_s=1, export_metrics=False)
    missing = Readiness(service.db, migrated.kafka_bootstrap_servers, migrated.migrations_dir,
                        required_topics=("billing.no-such-topic.v1",), export_metrics=False)
    api_only = Readiness(service.db, nowhere, migrated.migrations_dir, check_kafka=False, export_metrics=False)
    try:
        assert await down.check_once() is False
        assert down.checks["kafka"].startswith("unreachable") and down.checks["postgres"] == "ok"

        assert await missing.check_once() is False
        assert missing.checks["kafka"] == "missing topics: billing.no-such-topic.v1"

        assert await api_only.check_once() is True
        assert api_only.checks == {"postgres": "ok", "migrations": "ok", "kafka": "not required"}
    finally:
        for readiness in (down, missing, api_only):  # each checks on a connection of its own
            await readiness.close()

"""Overload: a bound on concurrent calls answered at once, every outcome counted (the calls
the client cancelled or let expire too), and readiness that a busy pool does not fool.

Slow calls are real ones: GetPlan waits on a lock another connection holds on `plans`.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from billing.api.server import GrpcServer
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.integration.test_plans_api import plan_request


def _count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("billing_grpc_requests_total", {"method": method, "code": code}) or 0.0


@asynccontextmanager
async def _plans_locked(settings):
    """Every read of `plans` waits until the block ends."""
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        async with conn.transaction():
            await conn.execute("lock table plans in access exclusive mode")
            yield
    finally:
        await conn.close()


async def _eventually(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.05)


async def test_calls_beyond_the_bound_are_refused_at_once_and_the_others_succeed(migrated, service, stub, tenant):
    plan = (await stub.CreatePlan(plan_request(), metadata=tenant.md)).plan
    bounded = GrpcServer(service.db, "127.0.0.1", 0, usage=service.components.usage,
                         run_shards=service.components.runs.shards, max_concurrent_calls=3)
    await bounded.start()
    await bounded.set_serving(True)
    refused_before = _count("GetPlan", "RESOURCE_EXHAUSTED")
    try:
        async with grpc.aio.insecure_channel(bounded.address) as channel:
            bstub = billing_pb2_grpc.BillingServiceStub(channel)

            async def get() -> tuple[grpc.StatusCode, float]:
                start = time.monotonic()
                try:
                    got = await bstub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=tenant.md, timeout=30)
                    assert got.plan == plan
                    return grpc.StatusCode.OK, time.monotonic() - start
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), time.monotonic() - start

            async with _plans_locked(migrated):
                calls = [asyncio.create_task(get()) for _ in range(3)]
                await _eventually(lambda: bounded.limiter.in_flight == 3)
                burst = await asyncio.wait_for(asyncio.gather(*(get() for _ in range(5))), 5)
                assert [code for code, _ in burst] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
                assert max(took for _, took in burst) < 1.0
                # health checks are never refused: a saturated replica is busy, not dead
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                assert not any(c.done() for c in calls)
            held = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert [code for code, _ in held] == [grpc.StatusCode.OK] * 3
        assert bounded.limiter.in_flight == 0
        assert _count("GetPlan", "RESOURCE_EXHAUSTED") - refused_before == 5
    finally:
        await bounded.stop(0)


async def test_cancelled_and_expired_calls_are_counted(migrated, stub, tenant):
    plan = (await stub.CreatePlan(plan_request(), metadata=tenant.md)).plan
    cancelled, expired = _count("GetPlan", "CANCELLED"), _count("GetPlan", "DEADLINE_EXCEEDED")
    ok = _count("GetPlan", "OK")
    async with _plans_locked(migrated):
        call = stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=tenant.md, timeout=30)
        await asyncio.sleep(0.5)
        call.cancel()
        await _eventually(lambda: _count("GetPlan", "CANCELLED") - cancelled == 1)
        try:
            await stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=tenant.md, timeout=0.5)
            raise AssertionError("the call should have expired")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _eventually(lambda: _count("GetPlan", "DEADLINE_EXCEEDED") - expired == 1)
    assert _count("GetPlan", "OK") == ok  # neither counted as a success
    assert (await stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=tenant.md)).plan == plan


async def test_readiness_stays_ready_while_the_request_pool_is_fully_held(service):
    pool = service.db.pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        assert pool.get_idle_size() == 0
        start = time.monotonic()
        assert await service.readiness.check_once() is True, service.readiness.checks
        assert time.monotonic() - start < service.readiness.timeout_s
        url = f"http://{service.settings.http_host}:{service.settings.http_port}/readyz"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200 and (await resp.json())["checks"]["postgres"] == "ok"
    finally:
        for conn in held:
            await pool.release(conn)

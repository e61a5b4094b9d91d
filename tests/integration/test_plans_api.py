"""Plans end to end: gRPC over a real socket, backed by real PostgreSQL."""
from __future__ import annotations

import uuid

import grpc
import pytest

from billing.v1 import billing_pb2 as pb


def plan_request(**overrides) -> pb.CreatePlanRequest:
    fields = dict(
        request_id=str(uuid.uuid4()), code=f"pro-{uuid.uuid4().hex[:8]}", name="Pro", description="Pro plan",
        currency="EUR", interval=pb.INTERVAL_UNIT_MONTH, interval_count=1, base_fee="19.99",
        billing_timing=pb.BILLING_TIMING_IN_ADVANCE, trial_days=14,
        usage_charges=[
            pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.0025"),
            pb.UsageCharge(metric_code="storage_gb", aggregation=pb.AGGREGATION_MAX,
                           pricing_model=pb.PRICING_MODEL_GRADUATED,
                           tiers=[pb.Tier(up_to="10", unit_price="0"), pb.Tier(up_to="", unit_price="0.5",
                                                                              flat_fee="1.00")]),
            pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_UNIQUE_COUNT,
                           pricing_model=pb.PRICING_MODEL_PACKAGE, unit_price="10", package_size="5",
                           unique_property="user_id"),
        ],
    )
    fields.update(overrides)
    return pb.CreatePlanRequest(**fields)


async def test_create_get_list_archive(stub, tenant, admin_conn):
    req = plan_request()
    created = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    assert created.code == req.code and created.version == 1
    assert created.status == pb.PLAN_STATUS_ACTIVE
    assert created.base_fee == "19.99" and created.currency == "EUR"
    assert [c.metric_code for c in created.usage_charges] == ["api_calls", "storage_gb", "seats"]
    assert created.usage_charges[1].tiers[1].up_to == "" and created.usage_charges[1].tiers[1].flat_fee == "1.00"
    assert created.usage_charges[2].unique_property == "user_id"

    fetched = (await stub.GetPlan(pb.GetPlanRequest(id=created.id), metadata=tenant.md)).plan
    assert fetched == created

    listed = await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    assert [p.id for p in listed.plans] == [created.id]

    archived = (await stub.ArchivePlan(pb.ArchivePlanRequest(request_id=str(uuid.uuid4()), id=created.id),
                                       metadata=tenant.md)).plan
    assert archived.status == pb.PLAN_STATUS_ARCHIVED and archived.HasField("archived_at")
    # Archiving again (a new request) is idempotent: still archived, same archive time.
    again = (await stub.ArchivePlan(pb.ArchivePlanRequest(request_id=str(uuid.uuid4()), id=created.id),
                                    metadata=tenant.md)).plan
    assert again.archived_at == archived.archived_at

    assert len((await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)).plans) == 0
    with_archived = await stub.ListPlans(pb.ListPlansRequest(include_archived=True), metadata=tenant.md)
    assert [p.id for p in with_archived.plans] == [created.id]

    rows = await admin_conn.fetch(
        "select action, actor, request_id, before, after from audit_events where entity_id = $1 order by id",
        uuid.UUID(created.id))
    assert [r["action"] for r in rows] == ["plan.created", "plan.archived"]
    assert rows[0]["before"] is None and rows[0]["after"]["status"] == "active"
    assert rows[1]["before"]["status"] == "active" and rows[1]["after"]["status"] == "archived"
    assert rows[0]["request_id"] == req.request_id and rows[0]["actor"] == f"api:{tenant.api_key_id}"


async def test_duplicate_code_is_already_exists(stub, tenant):
    req = plan_request()
    await stub.CreatePlan(req, metadata=tenant.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreatePlan(plan_request(code=req.code), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert req.code in err.value.details()


async def test_same_code_in_two_tenants_is_fine(stub, new_tenant):
    a, b = await new_tenant(), await new_tenant()
    req = plan_request()
    await stub.CreatePlan(req, metadata=a.md)
    other = (await stub.CreatePlan(plan_request(code=req.code), metadata=b.md)).plan
    assert other.code == req.code


async def test_replayed_request_id_returns_first_outcome(stub, tenant, admin_conn):
    req = plan_request()
    first = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    second = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    assert second == first
    count = await admin_conn.fetchval("select count(*) from plans where tenant_id = $1", uuid.UUID(tenant.id))
    assert count == 1


async def test_request_id_reused_for_other_content_is_refused(stub, tenant, admin_conn):
    req = plan_request()
    await stub.CreatePlan(req, metadata=tenant.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreatePlan(plan_request(request_id=req.request_id, name="Other"), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in err.value.details()
    count = await admin_conn.fetchval("select count(*) from plans where tenant_id = $1", uuid.UUID(tenant.id))
    assert count == 1


async def test_pagination_walks_every_plan_once(stub, tenant):
    ids = set()
    for i in range(7):
        ids.add((await stub.CreatePlan(plan_request(code=f"p{i}"), metadata=tenant.md)).plan.id)
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListPlans(pb.ListPlansRequest(page_size=3, page_token=token), metadata=tenant.md)
        seen += [p.id for p in page.plans]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and len(seen) == 7 and set(seen) == ids
    filtered = await stub.ListPlans(pb.ListPlansRequest(code="p3"), metadata=tenant.md)
    assert [p.code for p in filtered.plans] == ["p3"]


@pytest.mark.parametrize("request_, field", [
    (pb.ListPlansRequest(page_size=-1), "page_size"),
    (pb.ListPlansRequest(page_token="not-a-token"), "page_token"),
])
async def test_bad_list_arguments(stub, tenant, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListPlans(request_, metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


async def test_get_and_archive_unknown_or_malformed_id(stub, tenant):
    for call, req in [(stub.GetPlan, pb.GetPlanRequest(id=str(uuid.uuid4()))),
                      (stub.ArchivePlan, pb.ArchivePlanRequest(request_id="r1", id=str(uuid.uuid4())))]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=tenant.md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPlan(pb.GetPlanRequest(id="nope"), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("id")

"""docs/*.md runs as written, like the README (tests/e2e/test_readme.py): every ```sh and
```python block of every page, against the suite's stack, with the variables the README
has the reader export (KEY, GRPC, KAFKA, TENANT, SUB) and the BILLING_* settings in its
environment. Blocks not meant to run carry `<!-- not run: reason -->` (tests/doc_blocks.py)."""
from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.doc_blocks import blocks, run, tool, unmarked

PAGES = sorted((PROJECT_ROOT / "docs").glob("*.md"))
TOOLS = ("grpcurl", "kcat")  # examples that need a tool of their own are skipped (with a warning) without it


def test_every_block_is_runnable_or_says_why_not():
    assert PAGES
    found = [name for page in PAGES for name in unmarked(page)]
    assert not found, f"blocks neither run nor marked `<!-- not run: reason -->`: {found}"
    assert any(b.runs for page in PAGES for b in blocks(page.read_text()))


async def _subscription(stub, tenant) -> str:
    from billing.v1 import billing_pb2 as pb

    plan = (await stub.CreatePlan(pb.CreatePlanRequest(
        request_id=str(uuid.uuid4()), code=f"docs-{uuid.uuid4().hex[:8]}", name="Docs", currency="EUR",
        interval=pb.INTERVAL_UNIT_MONTH, interval_count=1, base_fee="1", billing_timing=pb.BILLING_TIMING_IN_ARREARS,
        usage_charges=[pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                                      pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")]),
        metadata=tenant.md)).plan
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=str(uuid.uuid4()), customer_id="docs", plan_id=plan.id, activate=True), metadata=tenant.md))
    return sub.subscription.id


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.runs for b in blocks(p.read_text()))],
                         ids=lambda p: p.name)
async def test_page_runs_as_written(page: Path, migrated, service, stub, tenant):
    env = {**os.environ, "KEY": tenant.api_key, "GRPC": service.grpc.address,
           "KAFKA": migrated.kafka_bootstrap_servers, "TENANT": tenant.id, "SUB": await _subscription(stub, tenant),
           "BILLING_API_ADDRESS": service.grpc.address, "BILLING_API_KEY": tenant.api_key,
           "BILLING_DATABASE_URL": migrated.database_url, "BILLING_WORKER_DATABASE_URL": migrated.worker_database_url,
           "BILLING_ADMIN_DATABASE_URL": migrated.admin_database_url,
           "BILLING_KAFKA_BOOTSTRAP_SERVERS": migrated.kafka_bootstrap_servers}
    found = {name: tool(name) for name in TOOLS}
    env["PATH"] = os.pathsep.join([*{str(Path(p).parent) for p in found.values() if p}, env["PATH"]])
    ran, skipped = 0, 0
    for block in blocks(page.read_text()):
        if not block.runs:
            continue
        missing = [name for name, path in found.items() if path is None and name in block.code.split()]
        if missing:
            warnings.warn(f"docs/{page.name}:{block.line} not run: {missing[0]} is not installed", stacklevel=1)
            skipped += 1
            continue
        out = await asyncio.to_thread(run, block, env, f"docs/{page.name}")
        if page.name == "api.md":  # the error details example: every violation at once
            assert "('code'," in out and "('currency'," in out, out
        ran += 1
    assert ran or skipped, f"no block of docs/{page.name} ran"

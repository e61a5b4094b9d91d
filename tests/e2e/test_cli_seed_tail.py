"""`billing seed` and `billing invoices tail` with the usage, billing and relay roles running:
the seed's usage goes through Kafka and its run's invoice requests come back out of Kafka,
read by `tail` and filtered by subscription; a second seed creates and bills nothing."""
from __future__ import annotations

import json

import pytest

from tests.e2e.test_cli_api import cli, ok, one_line
from tests.e2e.test_process import _env
from tests.kafka_helpers import running_roles


@pytest.fixture
def env(migrated, service, tenant):
    return _env(migrated, BILLING_API_ADDRESS=service.grpc.address, BILLING_API_KEY=tenant.api_key)


async def test_seed_twice_then_tail_each_subscription(env, migrated, tenant):
    seed = ("seed", "--tenant-id", tenant.id, "--subscriptions", "2", "--events", "5")
    async with running_roles(migrated, ("usage", "billing", "relay")):
        [first] = ok(await cli(*seed, env=env, timeout=180))
        [second] = ok(await cli(*seed, env=env, timeout=180))
    assert first["plan_created"] is True and first["subscriptions_created"] == 2 and first["usage_events"] == 10
    assert first["run"]["status"] == "BILLING_RUN_STATUS_COMPLETED" and first["run"]["billed"] == 2, first
    assert (second["plan_created"], second["subscriptions_created"], second["usage_events"]) == (False, 0, 0)
    assert second["plan_id"] == first["plan_id"] and second["subscriptions"] == first["subscriptions"]
    assert second["run"]["billed"] == 0, second
    listed = ok(await cli("subscriptions", "list", "--plan", first["plan_id"], env=env))
    assert sorted(s["customer_id"] for s in listed) == ["demo-seed-customer-1", "demo-seed-customer-2"]

    for sub in first["subscriptions"]:
        tail = await cli("invoices", "tail", "--from-beginning", "--subscription", sub, "--timeout", "20", env=env,
                         timeout=60)
        [request] = ok(tail)  # the whole topic read: this subscription's one request, no other
        assert request["subscription_id"] == sub and request["tenant_id"] == tenant.id
        assert [(line["kind"], line["amount"]) for line in request["lines"]] == [("base_fee", "9.00"),
                                                                                 ("usage", "0.50")]
        assert request["total"] == "9.50"
    both = ok(await cli("invoices", "tail", "--from-beginning", "--max", "2", "--timeout", "20", env=env))
    assert len(both) == 2  # unfiltered, --max ends it


async def test_tail_ends_with_exit_1_when_max_is_not_reached(env):
    proc = await cli("invoices", "tail", "--from-beginning", "--subscription", "no-such-subscription", "--max", "1",
                     "--timeout", "3", env=env)
    assert one_line(proc) == "billing invoices tail: 0 of 1 invoice requests within 3 s"
    assert proc.stdout == ""


@pytest.mark.parametrize("args,expected", [
    (["invoices", "tail", "--max", "0"], "billing invoices tail: --max must be at least 1, got 0"),
    (["invoices", "tail", "--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
    (["seed", "--tenant-id", "acme"], "billing seed: --tenant-id must be a UUID, got 'acme'"),
    (["seed"], "billing seed: seed needs --tenant-id"),
])
async def test_bad_input_is_one_line(env, args, expected, tmp_path):
    env = {**env, "BILLING_STATE_DIR": str(tmp_path)}  # no demo tenant there
    line = one_line(await cli(*args, env=env))
    assert expected in line, line


async def test_seed_finds_the_demo_tenant_of_billing_dev(env, migrated, tenant, tmp_path):
    (tmp_path / "demo-tenant.json").write_text(json.dumps({"tenant_id": tenant.id, "api_key": tenant.api_key}))
    env = {**env, "BILLING_STATE_DIR": str(tmp_path)}
    async with running_roles(migrated, ("usage", "billing", "relay")):
        [out] = ok(await cli("seed", "--code", "other", "--subscriptions", "1", "--events", "1", env=env,
                             timeout=180))
    assert out["tenant_id"] == tenant.id and out["plan_code"] == "other" and out["run"]["billed"] == 1

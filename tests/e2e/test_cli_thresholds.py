"""`billing thresholds ...` as a user runs it: subprocesses calling this session's real API,
JSON lines out and one line on failure (docs/alerts.md)."""
from __future__ import annotations

import uuid

import pytest

from tests.e2e.test_cli_api import cli, create_plan, ok, one_line
from tests.e2e.test_cli_credits import subscription
from tests.e2e.test_process import _env


@pytest.fixture
def env(migrated, service, tenant):
    return _env(migrated, BILLING_API_ADDRESS=service.grpc.address, BILLING_API_KEY=tenant.api_key)


async def test_thresholds_create_list_delete(env):
    sub = await subscription(env, "thr")
    [qty] = ok(await cli("thresholds", "create", "--subscription", sub["id"], "--metric", "api_calls", "--value",
                         "1000", env=env))
    assert (qty["subscription_id"], qty["metric_code"], qty["value"], qty["measure"]) == (
        sub["id"], "api_calls", "1000", "quantity")
    [amount] = ok(await cli("thresholds", "create", "--subscription", sub["id"], "--amount-of-period", "--value",
                            "50.00", "--invoice-on-cross", "--once", env=env))
    assert (amount["measure"], amount["value"], amount["invoice_on_cross"], amount.get("recurring", False)) == (
        "amount", "50.00", True, False)
    listed = ok(await cli("thresholds", "list", "--subscription", sub["id"], "--page-size", "1", env=env))
    assert [t["id"] for t in listed] == [qty["id"], amount["id"]]
    [deleted] = ok(await cli("thresholds", "delete", qty["id"], env=env))
    assert deleted["id"] == qty["id"] and deleted["deleted_at"]
    assert [t["id"] for t in ok(await cli("thresholds", "list", "--subscription", sub["id"], env=env))] == [
        amount["id"]]
    table = await cli("thresholds", "list", "--subscription", sub["id"], "--all", "--table", env=env)
    assert table.returncode == 0 and "amount" in table.stdout and "quantity" in table.stdout, table.stdout


async def test_a_plans_threshold(env):
    plan = await create_plan(env, "thr-plan")
    [t] = ok(await cli("thresholds", "create", "--plan", plan["id"], "--metric", "api_calls", "--value", "10",
                       env=env))
    assert t["plan_id"] == plan["id"] and not t.get("subscription_id")
    assert [x["id"] for x in ok(await cli("thresholds", "list", "--plan", plan["id"], env=env))] == [t["id"]]


@pytest.mark.parametrize("args,expected", [
    (["thresholds", "create", "--subscription", str(uuid.uuid4()), "--metric", "m"],
     "one of the arguments --value --percent is required"),
    (["thresholds", "create", "--metric", "m", "--value", "1"], "one of the arguments --subscription --plan"),
    (["thresholds", "list"], "one of the arguments --subscription --plan is required"),
])
async def test_bad_input_is_one_line(env, args, expected):
    line = one_line(await cli(*args, env=env))
    assert expected in line, line


async def test_the_api_names_the_refused_field(env):
    sub = await subscription(env, "thr-refused")
    line = one_line(await cli("thresholds", "create", "--subscription", sub["id"], "--metric", "api_calls",
                              "--percent", "80", env=env))
    assert line.startswith("billing thresholds create: INVALID_ARGUMENT: percent"), line
    line = one_line(await cli("thresholds", "create", "--subscription", sub["id"], "--metric", "api_calls",
                              "--value", "5", "--invoice-on-cross", env=env))
    assert line.startswith("billing thresholds create: INVALID_ARGUMENT: invoice_on_cross"), line

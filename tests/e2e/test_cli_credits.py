"""`billing discounts ...` and `billing credits ...` as a user runs them: subprocesses calling
this session's real API (PostgreSQL, row-level security, validation), JSON lines out and one
line on failure; the preview of the next invoice shows what they take off."""
from __future__ import annotations

import uuid

import pytest

from tests.e2e.test_cli_api import cli, create_plan, ok, one_line
from tests.e2e.test_process import _env


@pytest.fixture
def env(migrated, service, tenant):
    return _env(migrated, BILLING_API_ADDRESS=service.grpc.address, BILLING_API_KEY=tenant.api_key)


async def subscription(env, code: str, customer: str = "acme") -> dict:
    plan = await create_plan(env, code)
    [sub] = ok(await cli("subscriptions", "create", "--customer", customer, "--plan", plan["id"], "--activate",
                         "--trial-days", "0", env=env))
    return sub


async def test_discounts_create_list_delete(env):
    sub = await subscription(env, "disc")
    [percent] = ok(await cli("discounts", "create", "--subscription", sub["id"], "--percent", "20", "--applies-to",
                             "base_fee", "--periods", "3", env=env))
    assert (percent["subscription_id"], percent["kind"], percent["applies_to"], percent["periods"]) == (
        sub["id"], "DISCOUNT_KIND_PERCENTAGE", ["base_fee"], 3)
    assert percent["value"] == "20", percent
    [fixed] = ok(await cli("discounts", "create", "--subscription", sub["id"], "--amount", "1.00", env=env))
    assert (fixed["kind"], fixed["value"], fixed.get("applies_to", [])) == ("DISCOUNT_KIND_FIXED_AMOUNT", "1.00", [])
    listed = ok(await cli("discounts", "list", "--subscription", sub["id"], "--page-size", "1", env=env))
    assert [d["id"] for d in listed] == [percent["id"], fixed["id"]]
    # 19.99 - 20 % of it (4.00) - 1.00: the next invoice as the run will bill it.
    [invoice] = ok(await cli("subscriptions", "preview", sub["id"], env=env))
    assert invoice["total_amount"] == "14.99", invoice
    [deleted] = ok(await cli("discounts", "delete", fixed["id"], env=env))
    assert deleted["id"] == fixed["id"] and deleted["deleted_at"]
    assert [d["id"] for d in ok(await cli("discounts", "list", "--subscription", sub["id"], env=env))] == [
        percent["id"]]
    assert len(ok(await cli("discounts", "list", "--subscription", sub["id"], "--all", env=env))) == 2
    table = await cli("discounts", "list", "--subscription", sub["id"], "--table", env=env)
    assert table.returncode == 0 and "PERCENTAGE" in table.stdout and "0/3" in table.stdout, table.stdout


async def test_credits_grant_list_void(env):
    sub = await subscription(env, "cred", customer="initech")
    [grant] = ok(await cli("credits", "grant", "--subscription", sub["id"], "--amount", "5.00", "--description",
                           "welcome", "--expires-at", "2099-01-01T00:00:00Z", env=env))
    assert (grant["subscription_id"], grant["customer_id"], grant["currency"], grant["granted"], grant["remaining"],
            grant["status"], grant["description"]) == (sub["id"], "initech", "EUR", "5.00", "5.00", "active",
                                                       "welcome")
    [customer] = ok(await cli("credits", "grant", "--customer", "initech", "--currency", "EUR", "--amount", "2.50",
                              "--priority", "5", env=env))
    assert customer.get("subscription_id", "") == "" and customer["priority"] == 5
    assert {g["id"] for g in ok(await cli("credits", "list", "--customer", "initech", env=env))} == {
        grant["id"], customer["id"]}
    assert [g["id"] for g in ok(await cli("credits", "list", "--subscription", sub["id"], env=env))] == [grant["id"]]
    [voided] = ok(await cli("credits", "void", grant["id"], env=env))
    assert (voided["status"], voided["voided"], voided["remaining"]) == ("voided", "5.00", "0.00"), voided
    line = one_line(await cli("credits", "void", grant["id"], env=env))
    assert line.startswith("billing credits void: FAILED_PRECONDITION: "), line
    table = await cli("credits", "list", "--customer", "initech", "--table", env=env)
    assert table.returncode == 0 and "remaining" in table.stdout and "voided" in table.stdout, table.stdout


@pytest.mark.parametrize("args,expected", [
    (["discounts", "create", "--subscription", str(uuid.uuid4())],
     "one of the arguments --percent --amount is required"),
    (["discounts", "create", "--subscription", "s", "--percent", "5", "--amount", "1"],
     "argument --amount: not allowed with argument --percent"),
    (["discounts", "list"], "the following arguments are required: --subscription"),
    (["credits", "grant", "--amount", "5"], "billing credits grant: INVALID_ARGUMENT: "),
    (["credits", "grant", "--subscription", str(uuid.uuid4()), "--amount", "5", "--expires-at", "soon"],
     "--expires-at: not an RFC 3339 time"),
])
async def test_bad_input_is_one_line(env, args, expected):
    line = one_line(await cli(*args, env=env))
    assert expected in line, line


async def test_the_api_names_the_refused_field(env):
    sub = await subscription(env, "refused")
    line = one_line(await cli("discounts", "create", "--subscription", sub["id"], "--percent", "150", env=env))
    assert line.startswith("billing discounts create: INVALID_ARGUMENT: value"), line
    line = one_line(await cli("credits", "grant", "--subscription", sub["id"], "--amount", "-1", env=env))
    assert line.startswith("billing credits grant: INVALID_ARGUMENT: amount"), line


async def test_a_clock_with_a_discounted_subscription_can_be_deleted(env):
    [clock] = ok(await cli("clocks", "create", "--name", "fk", "--frozen-time", "2026-01-01T00:00:00Z", env=env))
    plan = await create_plan(env, "fk")
    [sub] = ok(await cli("subscriptions", "create", "--customer", "fk", "--plan", plan["id"], "--activate",
                         "--test-clock", clock["id"], env=env))
    ok(await cli("discounts", "create", "--subscription", sub["id"], "--percent", "10", env=env))
    ok(await cli("credits", "grant", "--subscription", sub["id"], "--amount", "1.00", env=env))
    [deleted] = ok(await cli("clocks", "delete", clock["id"], env=env))
    assert deleted["deleted_subscriptions"] == 1

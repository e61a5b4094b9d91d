"""`billing clocks ...`, `subscriptions preview|change-plan`, `--preview` and
`subscriptions create --time-zone --test-clock` as a user runs them: subprocesses calling
this session's real API (PostgreSQL and Kafka), the advance billed by the real run roles."""
from __future__ import annotations

import uuid

import pytest

from tests.e2e.test_cli_api import cli, create_plan, ok, one_line
from tests.e2e.test_process import _env
from tests.kafka_helpers import running_roles

JAN = "2026-01-01T00:00:00Z"


@pytest.fixture
def env(migrated, service, tenant):
    return _env(migrated, BILLING_API_ADDRESS=service.grpc.address, BILLING_API_KEY=tenant.api_key)


async def clock_subscription(env, code: str, *extra: str) -> tuple[dict, dict, dict]:
    """A clock at JAN, a plan (19.99 a month in arrears + 0.0025 per api call) and an active
    subscription on the clock in Europe/Dublin, started at the clock's time (or --start-at)."""
    [clock] = ok(await cli("clocks", "create", "--name", f"replay {code}", "--frozen-time", JAN, env=env))
    plan = await create_plan(env, code)
    [sub] = ok(await cli("subscriptions", "create", "--customer", "acme", "--plan", plan["id"], "--activate",
                         "--trial-days", "0", "--time-zone", "Europe/Dublin", "--test-clock", clock["id"], *extra, env=env))
    return clock, plan, sub


async def test_clocks_create_get_list_advance_delete(env, migrated):
    clock, _, sub = await clock_subscription(env, "clocked")
    assert (clock["name"], clock["frozen_time"], clock["status"]) == ("replay clocked", JAN, "TEST_CLOCK_STATUS_READY")
    assert (sub["time_zone"], sub["test_clock_id"], sub["start_at"]) == ("Europe/Dublin", clock["id"], JAN)
    assert sub["current_period_end"] == "2026-02-01T00:00:00Z"
    assert ok(await cli("clocks", "get", clock["id"], env=env)) == [clock]
    [other] = ok(await cli("clocks", "create", "--name", "other", "--frozen-time", "2030-06-01T12:00:00+02:00",
                           env=env))
    assert other["frozen_time"] == "2030-06-01T10:00:00Z"
    assert {c["id"] for c in ok(await cli("clocks", "list", "--page-size", "1", env=env))} == {clock["id"], other["id"]}
    table = await cli("clocks", "list", "--table", env=env)
    assert table.returncode == 0 and "frozen_time" in table.stdout and "replay clocked" in table.stdout

    # The preview at the clock's time is January as the run will bill it; the advance bills it.
    [january] = ok(await cli("subscriptions", "preview", sub["id"], env=env))
    assert (january["period_start"], january["period_end"], january["total_amount"]) == (JAN, "2026-02-01T00:00:00Z",
                                                                                        "19.99")
    two = ok(await cli("subscriptions", "preview", sub["id"], "--at", "2026-03-01T00:00:00Z", env=env))
    assert [i["period_end"] for i in two] == ["2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"]
    async with running_roles(migrated, ("billing", "relay")):
        proc = await cli("clocks", "advance", clock["id"], "--to", "2026-02-01T00:00:00Z", "--wait", env=env)
    [advanced] = ok(proc)
    assert (advanced["status"], advanced["frozen_time"]) == ("TEST_CLOCK_STATUS_READY", "2026-02-01T00:00:00Z")
    assert "1/1" in proc.stderr and "billed 1" in proc.stderr  # the advance's run, drawn like runs start --watch
    [got] = ok(await cli("subscriptions", "get", sub["id"], env=env))
    assert got["current_period_start"] == "2026-02-01T00:00:00Z"

    [deleted] = ok(await cli("clocks", "delete", clock["id"], env=env))
    assert deleted == {"id": clock["id"], "deleted": True, "deleted_subscriptions": 1}
    line = one_line(await cli("clocks", "get", clock["id"], env=env))
    assert line.startswith("billing clocks get: NOT_FOUND: "), line


async def test_previews_of_changes_change_nothing(env):
    # Started on December 16th: the clock's January 1st is the middle of its period.
    clock, plan, sub = await clock_subscription(env, "small", "--start-at", "2025-12-16T00:00:00Z")
    [bigger] = ok(await cli("plans", "create", "--code", "big", "--name", "Big", "--currency", "EUR", "--base-fee",
                            "49.99", "--timing", "in-arrears", env=env))
    [preview] = ok(await cli("subscriptions", "change-plan", sub["id"], "--plan", bigger["id"], "--timing",
                             "immediately", "--proration", "invoice-now", "--preview", env=env))
    assert preview["subscription"]["plan_code"] == "big" and preview["preview"]["currency"] == "EUR", preview
    # The old plan's 16 of 31 days, charged at the clock's time, invoiced now.
    assert [(line["kind"], line["amount"], line["fraction"]) for line in preview["preview"]["lines"]] == [
        ("proration_charge", "10.32", "16/31")]
    assert (preview["preview"]["total_amount"], preview["preview"]["invoice_now"]) == ("10.32", True)
    [cancel] = ok(await cli("subscriptions", "cancel", sub["id"], "--now", "--preview", env=env))
    assert cancel["subscription"]["status"] == "SUBSCRIPTION_STATUS_CANCELED", cancel
    assert [line["kind"] for line in cancel["preview"]["lines"]] == ["proration_charge", "usage"]
    table = await cli("subscriptions", "pause", sub["id"], "--preview", "--table", env=env)
    assert table.returncode == 0 and "proration_charge" in table.stdout, table
    assert [line.split()[:1] + line.split()[-1:] for line in table.stdout.splitlines() if " total " in line] == [
        ["total", "10.32"]], table.stdout
    [unchanged] = ok(await cli("subscriptions", "get", sub["id"], "--history", env=env))
    assert (unchanged["plan_code"], unchanged["status"]) == ("small", "SUBSCRIPTION_STATUS_ACTIVE")
    assert [h["action"] for h in unchanged["history"]] == ["created", "activated"]
    [changed] = ok(await cli("subscriptions", "change-plan", sub["id"], "--plan", bigger["id"], "--timing",
                             "immediately", env=env))
    assert changed["plan_code"] == "big" and changed["plan_id"] == bigger["id"]
    assert plan["id"] and clock["id"]


@pytest.mark.parametrize("args,expected", [
    (["clocks", "create", "--name", "x", "--frozen-time", "2026-01-01T00:00:00"],
     "--frozen-time: the time needs its UTC offset"),
    (["clocks", "create", "--name", "x", "--frozen-time", "1999-12-31T00:00:00Z"],
     "billing clocks create: INVALID_ARGUMENT: frozen_time"),
    (["clocks", "advance", str(uuid.uuid4())], "the following arguments are required: --to"),
    (["subscriptions", "preview", str(uuid.uuid4()), "--at", "tomorrow"], "--at: not an RFC 3339 time"),
    (["subscriptions", "change-plan", str(uuid.uuid4()), "--plan", "p", "--timing", "later"],
     "argument --timing: invalid choice: 'later'"),
    (["subscriptions", "create", "--customer", "a", "--plan", str(uuid.uuid4()), "--time-zone", "Mars/Olympus"],
     "billing subscriptions create: INVALID_ARGUMENT: time_zone"),
])
async def test_bad_input_is_one_line(env, args, expected):
    line = one_line(await cli(*args, env=env))
    assert expected in line, line


async def test_a_clock_moves_forward_only(env):
    [clock] = ok(await cli("clocks", "create", "--name", "fwd", "--frozen-time", JAN, env=env))
    line = one_line(await cli("clocks", "advance", clock["id"], "--to", "2025-12-31T00:00:00Z", env=env))
    assert line.startswith("billing clocks advance: INVALID_ARGUMENT: ") and "frozen_time" in line, line

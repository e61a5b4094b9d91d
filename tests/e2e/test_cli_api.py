"""`billing plans|subscriptions|runs` as a user runs them: a subprocess calling the real API
(this session's service, on real PostgreSQL and Kafka) with the address and the key from
BILLING_API_ADDRESS / BILLING_API_KEY or the flags; JSON lines out, one line on failure."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from billing.devstack import free_port
from tests.e2e.test_process import _env
from tests.kafka_helpers import running_roles


def billing(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "billing.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


async def cli(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """In a thread: the API under test answers on this process's event loop."""
    return await asyncio.to_thread(billing, *args, env=env, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc
    return lines[0]


@pytest.fixture
def env(migrated, service, tenant):
    return _env(migrated, BILLING_API_ADDRESS=service.grpc.address, BILLING_API_KEY=tenant.api_key)


async def create_plan(env, code: str, *extra: str) -> dict:
    [plan] = ok(await cli("plans", "create", "--code", code, "--name", "Pro", "--currency", "EUR", "--base-fee", "19.99",
                        "--timing", "in-arrears", "--usage", "api_calls=0.0025", *extra, env=env))
    return plan


async def test_plans_create_get_list(env):
    plan = await create_plan(env, "pro")
    assert (plan["code"], plan["currency"], plan["base_fee"], plan["status"]) == ("pro", "EUR", "19.99",
                                                                                  "PLAN_STATUS_ACTIVE")
    assert plan["interval"] == "INTERVAL_UNIT_MONTH" and plan["billing_timing"] == "BILLING_TIMING_IN_ARREARS"
    assert plan["usage_charges"] == [{"metric_code": "api_calls", "aggregation": "AGGREGATION_SUM",
                                      "pricing_model": "PRICING_MODEL_PER_UNIT", "unit_price": "0.0025"}]
    assert ok(await cli("plans", "get", plan["id"], env=env)) == [plan]
    others = [(await create_plan(env, f"p{i}", "--interval", "week"))["id"] for i in range(3)]
    listed = ok(await cli("plans", "list", "--page-size", "1", env=env))  # four pages of one
    assert sorted(p["id"] for p in listed) == sorted([plan["id"], *others])
    assert [p["id"] for p in ok(await cli("plans", "list", "--code", "pro", env=env))] == [plan["id"]]
    assert len(ok(await cli("plans", "list", "--limit", "2", "--page-size", "1", env=env))) == 2
    [archived] = ok(await cli("plans", "archive", others[0], env=env))
    assert archived["status"] == "PLAN_STATUS_ARCHIVED"
    assert len(ok(await cli("plans", "list", env=env))) == 3
    assert len(ok(await cli("plans", "list", "--all", env=env))) == 4
    table = await cli("plans", "list", "--table", env=env)
    assert table.returncode == 0 and "code" in table.stdout.splitlines()[0] and " pro " in table.stdout


async def test_plans_create_from_json(env, tmp_path):
    spec = {"code": "tiered", "name": "Tiered", "currency": "USD", "interval": "INTERVAL_UNIT_MONTH",
            "interval_count": 1, "base_fee": "0", "billing_timing": "BILLING_TIMING_IN_ARREARS",
            "usage_charges": [{"metric_code": "gb", "aggregation": "AGGREGATION_MAX",
                               "pricing_model": "PRICING_MODEL_GRADUATED",
                               "tiers": [{"up_to": "10", "unit_price": "0"}, {"unit_price": "0.5"}]}]}
    (tmp_path / "plan.json").write_text(json.dumps(spec))
    [plan] = ok(await cli("plans", "create", "--from-json", str(tmp_path / "plan.json"), env=env))
    assert plan["usage_charges"][0]["tiers"][1] == {"unit_price": "0.5", "flat_fee": "0"}


async def test_subscriptions_create_get_list_and_lifecycle(env):
    plan = await create_plan(env, "basic")
    [sub] = ok(await cli("subscriptions", "create", "--customer", "acme", "--plan", plan["id"], "--trial-days", "0",
                       "--metadata", "team=ops", env=env))
    assert (sub["status"], sub["plan_code"], sub["metadata"]) == ("SUBSCRIPTION_STATUS_PENDING", "basic",
                                                                  {"team": "ops"})
    assert ok(await cli("subscriptions", "activate", sub["id"], env=env))[0]["status"] == "SUBSCRIPTION_STATUS_ACTIVE"
    assert ok(await cli("subscriptions", "pause", sub["id"], env=env))[0]["status"] == "SUBSCRIPTION_STATUS_PAUSED"
    assert ok(await cli("subscriptions", "resume", sub["id"], env=env))[0]["status"] == "SUBSCRIPTION_STATUS_ACTIVE"
    assert ok(await cli("subscriptions", "cancel", sub["id"], env=env))[0]["cancel_at_period_end"] is True
    [got] = ok(await cli("subscriptions", "get", sub["id"], "--history", env=env))
    assert [h["action"] for h in got["history"]] == ["created", "activated", "paused", "resumed", "cancel_scheduled"]
    [other] = ok(await cli("subscriptions", "create", "--customer", "globex", "--plan", plan["id"], "--activate",
                         "--start-at", "now", env=env))
    assert other["status"] == "SUBSCRIPTION_STATUS_ACTIVE"
    assert {s["id"] for s in ok(await cli("subscriptions", "list", "--page-size", "1", env=env))} == {sub["id"],
                                                                                                   other["id"]}
    assert [s["id"] for s in ok(await cli("subscriptions", "list", "--customer", "globex", env=env))] == [other["id"]]
    ok(await cli("subscriptions", "cancel", other["id"], "--now", env=env))
    assert [s["id"] for s in ok(await cli("subscriptions", "list", "--status", "canceled", env=env))] == [other["id"]]


async def test_runs_start_watch_get_list(env, migrated):
    plan = await create_plan(env, "runs")
    start = (datetime.now(timezone.utc) - timedelta(days=33)).isoformat()
    [sub] = ok(await cli("subscriptions", "create", "--customer", "c1", "--plan", plan["id"], "--start-at", start,
                       "--activate", env=env))
    async with running_roles(migrated, ("billing", "relay")):
        proc = await cli("runs", "start", "--watch", env=env)
    [run] = ok(proc)
    assert run["status"] == "BILLING_RUN_STATUS_COMPLETED", run
    assert (run["subscriptions_due"], run["subscriptions_billed"]) == ("1", "1")
    assert run["totals"] == [{"currency": "EUR", "amount": "19.99"}]
    assert "1/1" in proc.stderr and "billed 1" in proc.stderr  # the progress bar's last state
    assert ok(await cli("runs", "get", run["id"], env=env)) == [run]
    assert [r["id"] for r in ok(await cli("runs", "list", "--status", "completed", env=env))] == [run["id"]]
    assert ok(await cli("runs", "list", "--status", "failed", env=env)) == []
    assert sub["id"]


@pytest.mark.parametrize("args,what", [
    (["plans", "get"], "plan"), (["subscriptions", "get"], "subscription"), (["runs", "get"], "billing run"),
    (["subscriptions", "pause"], "subscription"),
])
async def test_an_unknown_id_is_one_line(env, args, what):
    missing = str(uuid.uuid4())
    line = one_line(await cli(*args, missing, env=env))
    assert line.startswith(f"billing {' '.join(args)}: NOT_FOUND: ") and missing in line, line


@pytest.mark.parametrize("args,expected", [
    (["plans", "create", "--interval", "fortnight"], "argument --interval: invalid choice: 'fortnight'"),
    (["plans", "create", "--code", "x"], "billing plans create: plans create needs --name, --currency, --base-fee"),
    (["plans", "create", "--code", "x", "--name", "X", "--currency", "EUR", "--base-fee", "1", "--usage", "calls"],
     "--usage: expected METRIC=UNIT_PRICE"),
    (["plans", "create", "--code", "Bad Code!", "--name", "X", "--currency", "EURO", "--base-fee", "-1"],
     "billing plans create: INVALID_ARGUMENT: code: "),
    (["plans", "create", "--from-json", "/nonexistent/plan.json"], "billing plans create: --from-json: [Errno 2]"),
    (["subscriptions", "create", "--customer", "acme"], "the following arguments are required: --plan"),
    (["subscriptions", "create", "--customer", "a", "--plan", "p", "--start-at", "2026-11-01T00:00:00"],
     "--start-at: the time needs its UTC offset"),
    (["runs", "start", "--as-of", "yesterday"], "--as-of: not an RFC 3339 time"),
    (["runs", "list", "--status", "done"], "argument --status: invalid choice: 'done'"),
])
async def test_bad_input_is_one_line(env, args, expected):
    line = one_line(await cli(*args, env=env))
    assert expected in line, line


async def test_bad_plan_lists_every_violation(env):
    line = one_line(await cli("plans", "create", "--code", "Bad Code!", "--name", "X", "--currency", "EURO",
                            "--base-fee", "-1", env=env))
    assert "code:" in line and "currency:" in line and "base_fee:" in line, line


async def test_the_flags_win_over_the_settings(env, service, tenant):
    nowhere = free_port()
    wrong = {**env, "BILLING_API_ADDRESS": f"127.0.0.1:{nowhere}", "BILLING_API_KEY": "bk_not-a-key"}
    started = time.monotonic()
    line = one_line(await cli("plans", "list", env=wrong))
    assert line == f"billing plans list: cannot reach the billing API at 127.0.0.1:{nowhere} (BILLING_API_ADDRESS): " \
                   "connection refused"
    assert time.monotonic() - started < 15
    line = one_line(await cli("plans", "list", "--address", service.grpc.address, env=wrong))
    assert line == "billing plans list: UNAUTHENTICATED: unknown or revoked API key (the key from BILLING_API_KEY)"
    assert ok(await cli("plans", "list", "--address", service.grpc.address, "--api-key", tenant.api_key, env=wrong)) == []
    line = one_line(await cli("plans", "list", "--address", f"127.0.0.1:{nowhere}", env=env))
    assert f"at 127.0.0.1:{nowhere} (--address)" in line


async def test_no_key_is_one_line(env):
    no_key = {k: v for k, v in env.items() if k != "BILLING_API_KEY"}
    line = one_line(await cli("runs", "list", env=no_key))
    assert line.startswith("billing runs list: no API key: pass --api-key or set BILLING_API_KEY"), line

"""`billing entitlements check|list` as a user runs them: subprocesses calling this session's
real API. `check` answers with its exit code too (0 allowed, 1 not), so a script can branch."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from billing.v1 import billing_pb2 as pb
from tests.e2e.test_cli_api import cli, ok, one_line
from tests.e2e.test_cli_credits import env  # noqa: F401 - the fixture
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts


async def _subscription(stub, tenant) -> pb.Subscription:
    plan = (await stub.CreatePlan(plan_request(
        code=f"ent-{rid()[:8]}", trial_days=0, usage_charges=[
            pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_SUM,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="1")],
        features=[pb.Feature(code="sso", kind=pb.FEATURE_KIND_BOOLEAN),
                  pb.Feature(code="tier", kind=pb.FEATURE_KIND_STATIC, value="gold"),
                  pb.Feature(code="seats", kind=pb.FEATURE_KIND_METERED, metric_code="seats", limit="5",
                             limit_mode=pb.LIMIT_MODE_HARD)]), metadata=tenant.md)).plan
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="ent-cli", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription


async def test_check_and_list_follow_the_usage(env, stub, tenant):  # noqa: F811
    sub = await _subscription(stub, tenant)
    [seats] = ok(await cli("entitlements", "check", sub.id, "seats", env=env))
    assert (seats["allowed"], seats["used"], seats["limit"], seats["remaining"]) == (True, "0", "5", "5"), seats
    listed = ok(await cli("entitlements", "list", sub.id, env=env))
    assert [(e["feature_code"], e.get("value", "")) for e in listed] == [("sso", ""), ("tier", "gold"), ("seats", "")]
    await stub.RecordUsage(pb.RecordUsageRequest(request_id=rid(), event_id=rid(), subscription_id=sub.id,
                                                 metric_code="seats", quantity="5",
                                                 occurred_at=ts(datetime.now(timezone.utc))), metadata=tenant.md)
    refused = await cli("entitlements", "check", sub.id, "seats", env=env)
    assert refused.returncode == 1, refused.stderr
    [seats] = [json.loads(line) for line in refused.stdout.splitlines()]
    assert (seats.get("allowed", False), seats["used"], seats["reason"]) == (False, "5", "limit_reached"), seats
    absent = await cli("entitlements", "check", sub.id, "nope", env=env)
    assert absent.returncode == 1 and '"feature_not_in_plan"' in absent.stdout, absent.stdout
    table = await cli("entitlements", "list", sub.id, "--table", env=env)
    assert table.returncode == 0 and "gold" in table.stdout and "limit_reached" in table.stdout, table.stdout


async def test_an_unknown_subscription_is_one_line(env):  # noqa: F811
    line = one_line(await cli("entitlements", "check", rid(), "sso", env=env))
    assert line.startswith("billing entitlements check: NOT_FOUND: "), line

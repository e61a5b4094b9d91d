"""`billing seed`: demo data through the service's normal paths, so `make run` shows an
invoice request at once.

A plan (code `demo-seed` unless --code: monthly, in arrears, 9.00 plus 0.01 per
`api_calls`), subscriptions of customers `<code>-customer-1..N` started 33 days ago (so
their first month ended two or three days ago), usage for that first month produced to
Kafka (billing.usage.v1, as any metering producer would), then a billing run as of now,
followed to its end. The invoice requests of the first months are on
billing.invoice-requests.v1 when it returns (`billing invoices tail --from-beginning`).

Run again, it finds the plan by its code and each customer's subscription and creates
nothing; usage goes only to the subscriptions it created (event ids derive from the
subscription, so a repeat would be dropped as a duplicate anyway), and its run finds
nothing left to bill. Usage messages name their tenant, which the API does not tell from
a key: --tenant-id, else the demo tenant of `billing dev` when the key is its key.
"""
from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from billing.cli_common import Api, CommandError, api_key, connect_arguments, print_json, timestamp
from billing.cli_runs import watch
from billing.config import Settings
from billing.v1 import billing_pb2 as pb

METRIC = "api_calls"
EVENT_QUANTITY = 10


def tenant_of(settings: Settings, api_key: str, flag: str | None) -> str:
    if flag:
        try:
            return str(uuid.UUID(flag))
        except ValueError:
            raise CommandError(f"--tenant-id must be a UUID, got {flag!r}") from None
    demo = settings.state_dir / "demo-tenant.json"
    if demo.is_file():
        tenant = json.loads(demo.read_text())
        if tenant.get("api_key") == api_key:
            return tenant["tenant_id"]
    raise CommandError("seed needs --tenant-id: usage messages on Kafka name their tenant, which the API does "
                       f"not tell from a key (only the demo tenant's, from {demo}, is known)")


def _plan(api: Api, code: str) -> tuple[pb.Plan, bool]:
    found = list(api.pages("ListPlans", pb.ListPlansRequest(code=code, include_archived=True), "plans", 1))
    if found:
        if found[0].status != pb.PLAN_STATUS_ACTIVE:
            raise CommandError(f"plan {code} is archived; seed with another --code")
        return found[0], False
    request = pb.CreatePlanRequest(
        request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"billing-seed:plan:{code}")), code=code, name="Demo (seed)",
        currency="EUR", interval=pb.INTERVAL_UNIT_MONTH, interval_count=1, base_fee="9.00",
        billing_timing=pb.BILLING_TIMING_IN_ARREARS, trial_days=0,
        usage_charges=[pb.UsageCharge(metric_code=METRIC, aggregation=pb.AGGREGATION_SUM,
                                      pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")])
    return api("CreatePlan", request).plan, True


def _subscription(api: Api, plan: pb.Plan, customer: str) -> tuple[pb.Subscription, bool]:
    listing = pb.ListSubscriptionsRequest(customer_id=customer, plan_id=plan.id)
    found = list(api.pages("ListSubscriptions", listing, "subscriptions", 1))
    if found:
        return found[0], False
    request = pb.CreateSubscriptionRequest(
        request_id=str(uuid.uuid4()), customer_id=customer, plan_id=plan.id, trial_days=0, activate=True,
        start_at=timestamp((datetime.now(timezone.utc) - timedelta(days=33)).isoformat(), "start_at"),
        metadata={"seed": plan.code})
    return api("CreateSubscription", request).subscription, True


def _produce_usage(settings: Settings, tenant_id: str, subs: list[pb.Subscription], events: int) -> int:
    from billing.ops import reach
    from producers.usage_client import UsageProducer

    reach.check_kafka(settings.kafka_bootstrap_servers)
    with UsageProducer(settings, linger_ms=5) as producer:
        for sub in subs:
            first_day = sub.start_at.ToDatetime(tzinfo=timezone.utc) + timedelta(days=1)
            for k in range(events):
                producer.send(f"seed-{sub.id}-{k}", tenant_id, sub.id, METRIC, str(EVENT_QUANTITY),
                              first_day + timedelta(seconds=k))
        failures = producer.flush()
    if failures:
        raise CommandError(f"usage not delivered to Kafka: {failures[0]}")
    return events * len(subs)


def _wait_for_usage(api: Api, subs: list[pb.Subscription], quantity: int, timeout_s: float, dlq: str) -> None:
    """Until the usage consumer has stored every event: a run before that would bill the
    first month without it (and the usage later as late usage)."""
    deadline = time.monotonic() + timeout_s
    waiting = list(subs)
    while waiting:
        sub = waiting[0]
        usage = api("GetUsage", pb.GetUsageRequest(subscription_id=sub.id, period_start=sub.start_at))
        if any(m.metric_code == METRIC and Decimal(m.quantity or 0) >= quantity for m in usage.metrics):
            waiting.pop(0)
            continue
        if time.monotonic() > deadline:
            raise CommandError(f"usage of subscription {sub.id} not stored after {timeout_s:g} s: is the `usage` "
                               "role running, and is --tenant-id the key's tenant? (refused usage is on "
                               f"{dlq} with the reason)")
        time.sleep(0.5)


def seed(settings: Settings, args: argparse.Namespace) -> int:
    if args.subscriptions < 1 or args.events < 1:
        raise CommandError("--subscriptions and --events must be at least 1")
    api = Api(settings, args)
    try:
        tenant_id = tenant_of(settings, api_key(settings, args.api_key)[0], args.tenant_id)
        plan, plan_created = _plan(api, args.code)
        subs, created = [], []
        for i in range(1, args.subscriptions + 1):
            sub, new = _subscription(api, plan, f"{args.code}-customer-{i}")
            subs.append(sub)
            if new:
                created.append(sub)
        events = _produce_usage(settings, tenant_id, created, args.events) if created else 0
        _wait_for_usage(api, created, args.events * EVENT_QUANTITY, args.usage_timeout,
                        settings.topics.usage_dlq)
        summary: dict = {
            "tenant_id": tenant_id, "plan_id": plan.id, "plan_code": plan.code, "plan_created": plan_created,
            "subscriptions": [s.id for s in subs], "subscriptions_created": len(created), "usage_events": events,
        }
        if not args.no_run:
            run = api("RunBilling", pb.RunBillingRequest(request_id=str(uuid.uuid4()))).run
            run = watch(api, run, args.run_timeout)
            summary["run"] = {"id": run.id, "status": pb.BillingRunStatus.Name(run.status),
                              "billed": run.subscriptions_billed, "skipped": run.subscriptions_skipped,
                              "failed": run.subscriptions_failed}
        print_json(summary)
        return 0 if args.no_run or summary["run"]["status"] == "BILLING_RUN_STATUS_COMPLETED" else 1
    finally:
        api.close()


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, run) -> None:
    p = sub.add_parser("seed", parents=[common], help="a demo plan, subscriptions and their usage, then a billing "
                                                      "run: an invoice request per new subscription (idempotent)")
    connect_arguments(p)
    p.add_argument("--tenant-id", help="the key's tenant (default: the demo tenant of `billing dev`)")
    p.add_argument("--code", default="demo-seed", help="the plan's code; customers are <code>-customer-<n>")
    p.add_argument("--subscriptions", type=int, default=3)
    p.add_argument("--events", type=int, default=100, help=f"usage events per new subscription ({EVENT_QUANTITY} "
                                                           f"{METRIC} each)")
    p.add_argument("--no-run", action="store_true", help="no billing run (the scheduler's will bill them)")
    p.add_argument("--usage-timeout", type=float, default=60.0, help="seconds to wait for the usage to be stored")
    p.add_argument("--run-timeout", type=float, default=120.0, help="seconds to wait for the run to finish")
    p.set_defaults(func=run)

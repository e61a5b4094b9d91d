"""`billing plans ...` and `billing subscriptions ...`: the API's plan and subscription
calls from the command line (billing/cli_common.py finds the API and the key; previews and
plan changes: billing/cli_previews.py)."""
from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from billing.cli_common import (Api, ApiCommand, Column, CommandError, api_parsers, emit, enum_value, enum_words,
                                listing_arguments, request_id, timestamp)
from billing.cli_previews import add_verbs as add_preview_verbs, emit_change, preview_argument
from billing.v1 import billing_pb2 as pb

PLAN_COLUMNS: list[Column] = [
    ("id", lambda p: p.get("id")), ("code", lambda p: p.get("code")), ("name", lambda p: p.get("name")),
    ("currency", lambda p: p.get("currency")),
    ("period", lambda p: f"{p.get('interval_count', 0)} x {p.get('interval', '').removeprefix('INTERVAL_UNIT_')}"),
    ("base_fee", lambda p: p.get("base_fee")),
    ("usage", lambda p: ", ".join(c["metric_code"] for c in p.get("usage_charges", []))),
    ("status", lambda p: p.get("status", "").removeprefix("PLAN_STATUS_")),
]
SUBSCRIPTION_COLUMNS: list[Column] = [
    ("id", lambda s: s.get("id")), ("customer", lambda s: s.get("customer_id")),
    ("plan", lambda s: s.get("plan_code")), ("status", lambda s: s.get("status", "").removeprefix("SUBSCRIPTION_STATUS_")),
    ("period_start", lambda s: s.get("current_period_start")), ("period_end", lambda s: s.get("current_period_end")),
]


def _usage_charge(text: str) -> pb.UsageCharge:
    """`api_calls=0.0025`: a per-unit price of a summed metric (the common case; any other
    charge: --from-json)."""
    metric, sep, price = text.partition("=")
    try:
        ok = bool(sep and metric) and Decimal(price) >= 0
    except InvalidOperation:
        ok = False
    if not ok:
        raise CommandError(f"--usage: expected METRIC=UNIT_PRICE (e.g. api_calls=0.0025), got {text!r}")
    return pb.UsageCharge(metric_code=metric, aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                          unit_price=price)


def plan_request(args: argparse.Namespace) -> pb.CreatePlanRequest:
    if args.from_json:
        from google.protobuf import json_format

        try:
            text = sys.stdin.read() if args.from_json == "-" else Path(args.from_json).read_text()
            request = json_format.Parse(text, pb.CreatePlanRequest())
        except (OSError, json_format.ParseError) as exc:
            raise CommandError(f"--from-json: {exc}") from None
        request.request_id = request.request_id or request_id(args)
        return request
    missing = [f"--{name}" for name in ("code", "name", "currency", "base_fee") if getattr(args, name) is None]
    if missing:
        raise CommandError(f"plans create needs {', '.join(f.replace('_', '-') for f in missing)} (or --from-json)")
    return pb.CreatePlanRequest(
        request_id=request_id(args), code=args.code, name=args.name, description=args.description or "",
        currency=args.currency, interval=enum_value(pb.IntervalUnit, "INTERVAL_UNIT_", args.interval),
        interval_count=args.interval_count, base_fee=args.base_fee,
        billing_timing=enum_value(pb.BillingTiming, "BILLING_TIMING_", args.timing), trial_days=args.trial_days,
        usage_charges=[_usage_charge(u) for u in args.usage])


def plans_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListPlansRequest(page_size=args.page_size, include_archived=args.all, code=args.code or "")
    emit(api.pages("ListPlans", request, "plans", args.limit), args, PLAN_COLUMNS)
    return 0


def plans_get(api: Api, args: argparse.Namespace) -> int:
    emit([api("GetPlan", pb.GetPlanRequest(id=args.id)).plan], args, PLAN_COLUMNS)
    return 0


def plans_create(api: Api, args: argparse.Namespace) -> int:
    emit([api("CreatePlan", plan_request(args)).plan], args, PLAN_COLUMNS)
    return 0


def plans_archive(api: Api, args: argparse.Namespace) -> int:
    emit([api("ArchivePlan", pb.ArchivePlanRequest(request_id=request_id(args), id=args.id)).plan], args,
         PLAN_COLUMNS)
    return 0


def _metadata(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--metadata: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def subscriptions_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListSubscriptionsRequest(
        page_size=args.page_size, status=enum_value(pb.SubscriptionStatus, "SUBSCRIPTION_STATUS_", args.status),
        customer_id=args.customer or "", plan_id=args.plan or "")
    emit(api.pages("ListSubscriptions", request, "subscriptions", args.limit), args, SUBSCRIPTION_COLUMNS)
    return 0


def subscriptions_get(api: Api, args: argparse.Namespace) -> int:
    request = pb.GetSubscriptionRequest(id=args.id, include_history=args.history)
    emit([api("GetSubscription", request).subscription], args, SUBSCRIPTION_COLUMNS)
    return 0


def subscriptions_create(api: Api, args: argparse.Namespace) -> int:
    request = pb.CreateSubscriptionRequest(
        request_id=request_id(args), customer_id=args.customer, plan_id=args.plan, activate=args.activate,
        metadata=_metadata(args.metadata), time_zone=args.time_zone or "", test_clock_id=args.test_clock or "")
    for field, flag in (("start_at", "--start-at"), ("billing_anchor", "--anchor")):
        stamp = timestamp(getattr(args, field), flag)
        if stamp is not None:
            getattr(request, field).CopyFrom(stamp)
    if args.trial_days is not None:
        request.trial_days = args.trial_days
    emit([api("CreateSubscription", request).subscription], args, SUBSCRIPTION_COLUMNS)
    return 0


def subscriptions_lifecycle(api: Api, args: argparse.Namespace) -> int:
    verb, rid = args.subscriptions_command, request_id(args)
    if verb == "activate":
        response = api("ActivateSubscription", pb.ActivateSubscriptionRequest(request_id=rid, id=args.id))
    elif verb == "pause":
        request = pb.PauseSubscriptionRequest(request_id=rid, id=args.id, preview_only=args.preview)
        if args.resumes_at:
            request.resumes_at.CopyFrom(timestamp(args.resumes_at, "--resumes-at"))
        response = api("PauseSubscription", request)
    elif verb == "resume":
        response = api("ResumeSubscription", pb.ResumeSubscriptionRequest(request_id=rid, id=args.id))
    else:
        mode = pb.CANCEL_MODE_IMMEDIATELY if args.now else pb.CANCEL_MODE_AT_PERIOD_END
        response = api("CancelSubscription", pb.CancelSubscriptionRequest(
            request_id=rid, id=args.id, mode=mode,
            proration=enum_value(pb.ProrationBehavior, "PRORATION_BEHAVIOR_", args.proration),
            preview_only=args.preview))
    return emit_change(response, args, SUBSCRIPTION_COLUMNS)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`plans` and `subscriptions` with their verbs; `common` carries --debug."""
    parents, mutation = api_parsers(common)

    plans = sub.add_parser("plans", parents=[common], help="list, show, create, archive plans (over the API)")
    verbs = plans.add_subparsers(dest="plans_command", required=True)
    p = verbs.add_parser("list", parents=parents, help="active plans as JSON lines (--all: archived ones too)")
    p.add_argument("--all", action="store_true", help="archived plans too")
    p.add_argument("--code", help="only the plan with this code")
    listing_arguments(p)
    p.set_defaults(func=ApiCommand(plans_list))
    p = verbs.add_parser("get", parents=parents, help="one plan by id")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(plans_get))
    p = verbs.add_parser("create", parents=[*parents, mutation], help="create a plan; prints it")
    p.add_argument("--code")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--currency", help="ISO 4217, e.g. EUR")
    p.add_argument("--interval", choices=enum_words(pb.IntervalUnit, "INTERVAL_UNIT_"), default="month")
    p.add_argument("--interval-count", type=int, default=1)
    p.add_argument("--base-fee", help="decimal, e.g. 19.99")
    p.add_argument("--timing", choices=enum_words(pb.BillingTiming, "BILLING_TIMING_"), default="in-advance")
    p.add_argument("--trial-days", type=int, default=0)
    p.add_argument("--usage", action="append", default=[], metavar="METRIC=UNIT_PRICE",
                   help="a per-unit usage charge (repeatable); other pricing models: --from-json")
    p.add_argument("--from-json", metavar="FILE", help="a CreatePlanRequest in proto JSON (- = stdin), "
                                                       "instead of the flags")
    p.set_defaults(func=ApiCommand(plans_create))
    p = verbs.add_parser("archive", parents=[*parents, mutation], help="archive a plan (its code stays taken)")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(plans_archive))

    subs = sub.add_parser("subscriptions", parents=[common], help="list, show, create subscriptions, change their state")
    verbs = subs.add_subparsers(dest="subscriptions_command", required=True)
    p = verbs.add_parser("list", parents=parents, help="subscriptions as JSON lines")
    p.add_argument("--status", choices=enum_words(pb.SubscriptionStatus, "SUBSCRIPTION_STATUS_"))
    p.add_argument("--customer")
    p.add_argument("--plan", help="plan id")
    listing_arguments(p)
    p.set_defaults(func=ApiCommand(subscriptions_list))
    p = verbs.add_parser("get", parents=parents, help="one subscription by id")
    p.add_argument("id")
    p.add_argument("--history", action="store_true", help="with its audit trail")
    p.set_defaults(func=ApiCommand(subscriptions_get))
    p = verbs.add_parser("create", parents=[*parents, mutation], help="create a subscription; prints it")
    p.add_argument("--customer", required=True)
    p.add_argument("--plan", required=True, help="plan id")
    p.add_argument("--start-at", help="RFC 3339 time or `now` (default: at activation)")
    p.add_argument("--anchor", dest="billing_anchor", help="billing anchor, RFC 3339")
    p.add_argument("--trial-days", type=int, help="default: the plan's")
    p.add_argument("--activate", action="store_true", help="activate at once (else PENDING)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--time-zone", help="IANA zone its periods are calendar periods of, e.g. Europe/Dublin "
                                       "(default: UTC; fixed for life)")
    p.add_argument("--test-clock", metavar="CLOCK_ID", help="live on this test clock's time (`billing clocks`)")
    p.set_defaults(func=ApiCommand(subscriptions_create))
    for verb, what in (("activate", "PENDING -> TRIALING/ACTIVE, or end a trial now"),
                       ("pause", "ACTIVE -> PAUSED from now"), ("resume", "PAUSED -> ACTIVE from now"),
                       ("cancel", "cancel at the period end (--now: at once)")):
        p = verbs.add_parser(verb, parents=[*parents, mutation], help=what)
        p.add_argument("id")
        if verb == "pause":
            p.add_argument("--resumes-at", help="automatic resume, RFC 3339")
        if verb == "cancel":
            p.add_argument("--now", action="store_true", help="cancel immediately instead of at the period end")
            p.add_argument("--proration", choices=enum_words(pb.ProrationBehavior, "PRORATION_BEHAVIOR_"),
                           help="settling the unused part (--now only)")
        if verb in ("pause", "cancel"):
            preview_argument(p)
        p.set_defaults(func=ApiCommand(subscriptions_lifecycle))
    add_preview_verbs(verbs, parents, mutation)

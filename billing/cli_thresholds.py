"""`billing thresholds create|list|delete`: usage thresholds over the API (docs/alerts.md).
A threshold is on a metric's quantity (--metric) or on the period's running amount
(--amount-of-period), of a subscription or of every subscription on a plan (--plan);
its value absolute (--value) or a share of a limit (--percent). --invoice-on-cross makes an
amount threshold bill the period so far when crossed (progressive billing, docs/billing.md)."""
from __future__ import annotations

import argparse

from billing.cli_common import Api, ApiCommand, Column, api_parsers, emit, listing_arguments, request_id
from billing.v1 import billing_pb2 as pb

THRESHOLD_COLUMNS: list[Column] = [
    ("id", lambda t: t.get("id")),
    ("scope", lambda t: f"subscription {t['subscription_id']}" if t.get("subscription_id")
     else f"plan {t.get('plan_id', '')}"),
    ("measure", lambda t: t.get("measure", "quantity")),
    ("metric", lambda t: t.get("metric_code", "")),
    ("value", lambda t: t.get("value") + (f" ({t['percent']}%)" if t.get("percent") else "")),
    ("recurring", lambda t: bool(t.get("recurring"))),
    ("invoice_on_cross", lambda t: bool(t.get("invoice_on_cross"))),
    ("deleted_at", lambda t: t.get("deleted_at")),
]


def thresholds_create(api: Api, args: argparse.Namespace) -> int:
    request = pb.CreateThresholdRequest(
        request_id=request_id(args), subscription_id=args.subscription or "", plan_id=args.plan or "",
        metric_code=args.metric or "", measure="amount" if args.amount_of_period else "quantity",
        value=args.value or "", percent=args.percent or "", once=args.once, invoice_on_cross=args.invoice_on_cross)
    emit([api("CreateThreshold", request).threshold], args, THRESHOLD_COLUMNS)
    return 0


def thresholds_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListThresholdsRequest(page_size=args.page_size, subscription_id=args.subscription or "",
                                       plan_id=args.plan or "", include_deleted=args.all)
    emit(api.pages("ListThresholds", request, "thresholds", args.limit), args, THRESHOLD_COLUMNS)
    return 0


def thresholds_delete(api: Api, args: argparse.Namespace) -> int:
    request = pb.DeleteThresholdRequest(request_id=request_id(args), id=args.id)
    emit([api("DeleteThreshold", request).threshold], args, THRESHOLD_COLUMNS)
    return 0


def _scope(p: argparse.ArgumentParser) -> None:
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--subscription", metavar="ID")
    scope.add_argument("--plan", metavar="ID", help="a plan's thresholds: every subscription on the plan")


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parents, mutation = api_parsers(common)
    thresholds = sub.add_parser("thresholds", parents=[common], help="usage thresholds (over the API)")
    verbs = thresholds.add_subparsers(dest="thresholds_command", required=True)
    p = verbs.add_parser("create", parents=[*parents, mutation], help="a threshold; prints it")
    _scope(p)
    measure = p.add_mutually_exclusive_group(required=True)
    measure.add_argument("--metric", metavar="CODE", help="a metric's period quantity")
    measure.add_argument("--amount-of-period", action="store_true",
                         help="the period's running amount (usage charges as the close prices them)")
    value = p.add_mutually_exclusive_group(required=True)
    value.add_argument("--value", metavar="V", help="an absolute value, a decimal >= 0 (e.g. 1000, 50.00)")
    value.add_argument("--percent", metavar="P", help="a share of a limit: of the metric's metered entitlement, "
                                                      "or of the plan's minimum commitment (e.g. 80)")
    p.add_argument("--once", action="store_true", help="fire once ever (default: once per period)")
    p.add_argument("--invoice-on-cross", action="store_true",
                   help="amount thresholds: invoice the period so far when crossed (progressive billing)")
    p.set_defaults(func=ApiCommand(thresholds_create))
    p = verbs.add_parser("list", parents=parents, help="a subscription's or a plan's thresholds as JSON lines, "
                                                       "in creation order")
    _scope(p)
    p.add_argument("--all", action="store_true", help="deleted thresholds too")
    listing_arguments(p)
    p.set_defaults(func=ApiCommand(thresholds_list))
    p = verbs.add_parser("delete", parents=[*parents, mutation], help="delete a threshold: it fires no more; "
                                                                       "prints it")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(thresholds_delete))

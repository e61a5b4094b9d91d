"""`billing discounts create|list|delete`: a subscription's discounts over the API
(docs/billing.md, "The order of an invoice"). A discount is a percentage (--percent) or an
amount per period (--amount), on the whole invoice or on --applies-to charges."""
from __future__ import annotations

import argparse

from billing.cli_common import Api, ApiCommand, Column, api_parsers, emit, listing_arguments, request_id
from billing.v1 import billing_pb2 as pb

DISCOUNT_COLUMNS: list[Column] = [
    ("id", lambda d: d.get("id")), ("subscription", lambda d: d.get("subscription_id")),
    ("kind", lambda d: d.get("kind", "").removeprefix("DISCOUNT_KIND_")), ("value", lambda d: d.get("value")),
    ("applies_to", lambda d: ", ".join(d.get("applies_to", [])) or "invoice"),
    ("periods", lambda d: f"{d.get('periods_used', 0)}/{d.get('periods') or 'forever'}"),
    ("deleted_at", lambda d: d.get("deleted_at")),
]


def discounts_create(api: Api, args: argparse.Namespace) -> int:
    kind, value = ((pb.DISCOUNT_KIND_PERCENTAGE, args.percent) if args.percent is not None
                   else (pb.DISCOUNT_KIND_FIXED_AMOUNT, args.amount))
    request = pb.CreateDiscountRequest(request_id=request_id(args), subscription_id=args.subscription, kind=kind,
                                       value=value, applies_to=args.applies_to, periods=args.periods)
    emit([api("CreateDiscount", request).discount], args, DISCOUNT_COLUMNS)
    return 0


def discounts_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListDiscountsRequest(page_size=args.page_size, subscription_id=args.subscription,
                                      include_deleted=args.all)
    emit(api.pages("ListDiscounts", request, "discounts", args.limit), args, DISCOUNT_COLUMNS)
    return 0


def discounts_delete(api: Api, args: argparse.Namespace) -> int:
    request = pb.DeleteDiscountRequest(request_id=request_id(args), id=args.id)
    emit([api("DeleteDiscount", request).discount], args, DISCOUNT_COLUMNS)
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parents, mutation = api_parsers(common)
    discounts = sub.add_parser("discounts", parents=[common], help="a subscription's discounts (over the API)")
    verbs = discounts.add_subparsers(dest="discounts_command", required=True)
    p = verbs.add_parser("create", parents=[*parents, mutation], help="a discount of a subscription; prints it")
    p.add_argument("--subscription", required=True, metavar="ID")
    value = p.add_mutually_exclusive_group(required=True)
    value.add_argument("--percent", metavar="P", help="a percentage, > 0 and <= 100 (e.g. 20)")
    value.add_argument("--amount", metavar="A", help="an amount per period in the plan's currency (e.g. 5.00)")
    p.add_argument("--applies-to", action="append", default=[], metavar="CHARGE",
                   help="`base_fee` or a metric code (repeatable; default: the whole invoice)")
    p.add_argument("--periods", type=int, default=0, help="period closes it applies to (default 0: forever)")
    p.set_defaults(func=ApiCommand(discounts_create))
    p = verbs.add_parser("list", parents=parents, help="a subscription's discounts as JSON lines, in the order "
                                                       "a close applies them")
    p.add_argument("--subscription", required=True, metavar="ID")
    p.add_argument("--all", action="store_true", help="deleted discounts too")
    listing_arguments(p)
    p.set_defaults(func=ApiCommand(discounts_list))
    p = verbs.add_parser("delete", parents=[*parents, mutation], help="delete a discount: no later close applies "
                                                                       "it; prints it")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(discounts_delete))

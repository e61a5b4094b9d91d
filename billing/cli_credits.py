"""`billing credits grant|list|void`: prepaid credit grants over the API (docs/billing.md,
"Credits"). A grant goes to a subscription (--subscription) or to every subscription of a
customer in one currency (--customer with --currency)."""
from __future__ import annotations

import argparse

from billing.cli_common import Api, ApiCommand, Column, api_parsers, emit, listing_arguments, request_id, timestamp
from billing.v1 import billing_pb2 as pb

GRANT_COLUMNS: list[Column] = [
    ("id", lambda g: g.get("id")), ("customer", lambda g: g.get("customer_id")),
    ("subscription", lambda g: g.get("subscription_id")), ("currency", lambda g: g.get("currency")),
    ("granted", lambda g: g.get("granted")), ("applied", lambda g: g.get("applied")),
    ("remaining", lambda g: g.get("remaining")), ("status", lambda g: g.get("status")),
    ("expires_at", lambda g: g.get("expires_at")),
]


def credits_grant(api: Api, args: argparse.Namespace) -> int:
    request = pb.CreateCreditGrantRequest(
        request_id=request_id(args), subscription_id=args.subscription or "", customer_id=args.customer or "",
        amount=args.amount, currency=args.currency or "", priority=args.priority, description=args.description or "")
    for field, flag in (("effective_at", "--effective-at"), ("expires_at", "--expires-at")):
        stamp = timestamp(getattr(args, field), flag)
        if stamp is not None:
            getattr(request, field).CopyFrom(stamp)
    emit([api("CreateCreditGrant", request).grant], args, GRANT_COLUMNS)
    return 0


def credits_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListCreditGrantsRequest(page_size=args.page_size, subscription_id=args.subscription or "",
                                         customer_id=args.customer or "")
    emit(api.pages("ListCreditGrants", request, "grants", args.limit), args, GRANT_COLUMNS)
    return 0


def credits_void(api: Api, args: argparse.Namespace) -> int:
    emit([api("VoidCreditGrant", pb.VoidCreditGrantRequest(request_id=request_id(args), id=args.id)).grant], args,
         GRANT_COLUMNS)
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parents, mutation = api_parsers(common)
    credits = sub.add_parser("credits", parents=[common], help="prepaid credit grants (over the API)")
    verbs = credits.add_subparsers(dest="credits_command", required=True)
    p = verbs.add_parser("grant", parents=[*parents, mutation], help="grant credit to a subscription or a "
                                                                     "customer; prints the grant")
    p.add_argument("--amount", required=True, help="decimal > 0, e.g. 50.00")
    p.add_argument("--subscription", metavar="ID", help="the subscription to credit")
    p.add_argument("--customer", help="without --subscription: every subscription of this customer in --currency")
    p.add_argument("--currency", help="ISO 4217; required without --subscription")
    p.add_argument("--priority", type=int, default=0, help="0..1000000, lower burns first")
    p.add_argument("--effective-at", help="RFC 3339 (default: now)")
    p.add_argument("--expires-at", help="RFC 3339 (default: never)")
    p.add_argument("--description")
    p.set_defaults(func=ApiCommand(credits_grant))
    p = verbs.add_parser("list", parents=parents, help="credit grants as JSON lines")
    p.add_argument("--subscription", metavar="ID")
    p.add_argument("--customer")
    listing_arguments(p)
    p.set_defaults(func=ApiCommand(credits_list))
    p = verbs.add_parser("void", parents=[*parents, mutation], help="void a grant's rest; prints the grant")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(credits_void))

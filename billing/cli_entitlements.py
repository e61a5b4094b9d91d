"""`billing entitlements check|list`: what a subscription may use now, over the API
(docs/entitlements.md): a product's backend asks CheckEntitlement before it lets a call
through; these commands show the same answers to a person."""
from __future__ import annotations

import argparse

from billing.cli_common import Api, ApiCommand, Column, api_parsers, emit
from billing.v1 import billing_pb2 as pb

ENTITLEMENT_COLUMNS: list[Column] = [
    ("feature", lambda e: e.get("feature_code")), ("kind", lambda e: e.get("kind", "").removeprefix("FEATURE_KIND_")),
    ("allowed", lambda e: "yes" if e.get("allowed") else "no"), ("value", lambda e: e.get("value")),
    ("used", lambda e: e.get("used")), ("limit", lambda e: e.get("limit")),
    ("remaining", lambda e: e.get("remaining")), ("reason", lambda e: e.get("reason")),
]


def entitlements_check(api: Api, args: argparse.Namespace) -> int:
    """Exit 0 when allowed, 1 when not, so a script can branch on it."""
    request = pb.CheckEntitlementRequest(subscription_id=args.subscription, feature_code=args.feature)
    entitlement = api("CheckEntitlement", request).entitlement
    emit([entitlement], args, ENTITLEMENT_COLUMNS)
    return 0 if entitlement.allowed else 1


def entitlements_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListEntitlementsRequest(subscription_id=args.subscription)
    emit(list(api("ListEntitlements", request).entitlements), args, ENTITLEMENT_COLUMNS)
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parents, _ = api_parsers(common)
    entitlements = sub.add_parser("entitlements", parents=[common],
                                  help="what a subscription may use now (over the API)")
    verbs = entitlements.add_subparsers(dest="entitlements_command", required=True)
    p = verbs.add_parser("check", parents=parents, help="one feature: prints the entitlement; exit 1 when not allowed")
    p.add_argument("subscription", metavar="SUBSCRIPTION_ID")
    p.add_argument("feature", metavar="FEATURE_CODE")
    p.set_defaults(func=ApiCommand(entitlements_check))
    p = verbs.add_parser("list", parents=parents, help="every feature of the subscription's plan, as JSON lines")
    p.add_argument("subscription", metavar="SUBSCRIPTION_ID")
    p.set_defaults(func=ApiCommand(entitlements_list))

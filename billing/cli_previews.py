"""`billing subscriptions preview|change-plan` and the `--preview` of change-plan, pause and
cancel (docs/time.md, "Previews"): what a run or a change would bill, with nothing changed.

`preview ID [--at T]` prints one JSON line per period PreviewInvoice returns. A change with
--preview prints one line: the response, i.e. the subscription as it would be and the
`preview` (its lines, total, currency, invoice_now); --table shows the lines and a total."""
from __future__ import annotations

import argparse
from typing import Any

from billing.cli_common import Api, ApiCommand, Column, emit, enum_value, enum_words, print_json, as_dict, \
    request_id, timestamp
from billing.v1 import billing_pb2 as pb

INVOICE_COLUMNS: list[Column] = [
    ("invoice_request_id", lambda i: i.get("invoice_request_id")), ("period_start", lambda i: i.get("period_start")),
    ("period_end", lambda i: i.get("period_end")), ("currency", lambda i: i.get("currency")),
    ("lines", lambda i: ", ".join(f"{line.get('kind')} {line.get('amount')}" for line in i.get("lines", []))),
    ("total", lambda i: i.get("total_amount")),
]
LINE_COLUMNS: list[Column] = [
    ("kind", lambda line: line.get("kind")), ("description", lambda line: line.get("description")),
    ("quantity", lambda line: line.get("quantity")), ("unit_price", lambda line: line.get("unit_price")),
    ("amount", lambda line: line.get("amount")), ("period_start", lambda line: line.get("period_start")),
    ("period_end", lambda line: line.get("period_end")),
]


def subscriptions_preview(api: Api, args: argparse.Namespace) -> int:
    request = pb.PreviewInvoiceRequest(subscription_id=args.id)
    stamp = timestamp(args.at, "--at")
    if stamp is not None:
        request.at.CopyFrom(stamp)
    emit(api("PreviewInvoice", request).invoices, args, INVOICE_COLUMNS)
    return 0


def emit_change(response: Any, args: argparse.Namespace, columns: list[Column]) -> int:
    """A lifecycle call's answer: the subscription, or with --preview the whole response."""
    if not getattr(args, "preview", False):
        emit([response.subscription], args, columns)
    elif getattr(args, "table", False):
        preview = response.preview
        total = pb.InvoiceLine(kind="total", description=f"{preview.currency}, "
                                                         f"{'invoiced now' if preview.invoice_now else 'next invoice'}",
                               amount=preview.total_amount or "0")
        emit([*preview.lines, total], args, LINE_COLUMNS)
    else:
        print_json(as_dict(response))
    return 0


def subscriptions_change_plan(api: Api, args: argparse.Namespace) -> int:
    request = pb.ChangePlanRequest(
        request_id=request_id(args), id=args.id, new_plan_id=args.plan,
        timing=enum_value(pb.ChangeTiming, "CHANGE_TIMING_", args.timing),
        proration_behavior=enum_value(pb.ProrationBehavior, "PRORATION_BEHAVIOR_", args.proration),
        preview_only=args.preview)
    from billing.cli_catalog import SUBSCRIPTION_COLUMNS

    return emit_change(api("ChangePlan", request), args, SUBSCRIPTION_COLUMNS)


def preview_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preview", action="store_true", help="print what the change would bill (the response with "
                                                          "its `preview`) and change nothing")


def add_verbs(verbs: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
              mutation: argparse.ArgumentParser) -> None:
    """`subscriptions preview` and `subscriptions change-plan`."""
    p = verbs.add_parser("preview", parents=parents, help="the invoice request(s) a billing run would emit for "
                                                          "the subscription, one JSON line per period")
    p.add_argument("id")
    p.add_argument("--at", help="the time of the preview, RFC 3339 (default: now, or its test clock's time); at or "
                                "after the period end: every period a run as of then would close")
    p.set_defaults(func=ApiCommand(subscriptions_preview))
    p = verbs.add_parser("change-plan", parents=[*parents, mutation], help="move a subscription to another plan")
    p.add_argument("id")
    p.add_argument("--plan", required=True, help="the new plan's id (the current plan: withdraw a pending change)")
    p.add_argument("--timing", choices=enum_words(pb.ChangeTiming, "CHANGE_TIMING_"),
                   help="default: upgrades immediately, downgrades at the period end")
    p.add_argument("--proration", choices=enum_words(pb.ProrationBehavior, "PRORATION_BEHAVIOR_"),
                   help="settling the partial period of an immediate change (default: next-invoice)")
    preview_argument(p)
    p.set_defaults(func=ApiCommand(subscriptions_change_plan))

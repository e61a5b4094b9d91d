"""`billing runs list|get|start [--watch]`: billing runs over the API. --watch polls
GetBillingRun and draws its counters (billed + skipped + failed of due) as a progress bar
on stderr, then prints the finished run on stdout like `get` does."""
from __future__ import annotations

import argparse
import sys
import time

from billing.cli_common import (Api, ApiCommand, Column, CommandError, connect_arguments, emit, enum_value,
                                enum_words, output_arguments, request_id, timestamp)
from billing.v1 import billing_pb2 as pb

RUN_COLUMNS: list[Column] = [
    ("id", lambda r: r.get("id")), ("status", lambda r: r.get("status", "").removeprefix("BILLING_RUN_STATUS_")),
    ("as_of", lambda r: r.get("as_of")), ("due", lambda r: r.get("subscriptions_due", "0")),
    ("billed", lambda r: r.get("subscriptions_billed", "0")), ("skipped", lambda r: r.get("subscriptions_skipped", "0")),
    ("failed", lambda r: r.get("subscriptions_failed", "0")),
    ("totals", lambda r: ", ".join(f"{t['currency']} {t['amount']}" for t in r.get("totals", []))),
]
FINISHED = (pb.BILLING_RUN_STATUS_COMPLETED, pb.BILLING_RUN_STATUS_FAILED)
POLL_S = 0.5


def runs_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListBillingRunsRequest(
        page_size=args.page_size, status=enum_value(pb.BillingRunStatus, "BILLING_RUN_STATUS_", args.status))
    for field, flag in (("created_after", "--created-after"), ("created_before", "--created-before")):
        stamp = timestamp(getattr(args, field), flag)
        if stamp is not None:
            getattr(request, field).CopyFrom(stamp)
    emit(api.pages("ListBillingRuns", request, "runs", args.limit), args, RUN_COLUMNS)
    return 0


def runs_get(api: Api, args: argparse.Namespace) -> int:
    emit([api("GetBillingRun", pb.GetBillingRunRequest(id=args.id)).run], args, RUN_COLUMNS)
    return 0


def _done(run: pb.BillingRun) -> int:
    return run.subscriptions_billed + run.subscriptions_skipped + run.subscriptions_failed


def watch(api: Api, run: pb.BillingRun, timeout_s: float) -> pb.BillingRun:
    """Poll until the run finishes, with a progress bar on stderr (drawn live on a terminal,
    the last state otherwise)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout_s
    columns = (TextColumn("run {task.fields[run]} {task.fields[status]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("billed {task.fields[billed]} skipped {task.fields[skipped]} failed {task.fields[failed]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("run", total=None, run=run.id[:8], status="", billed=0, skipped=0, failed=0)
        while True:
            known = run.subscriptions_due or run.status in FINISHED  # 0 due: unknown until the run says
            progress.update(task, total=run.subscriptions_due if known else None, completed=_done(run),
                            status=pb.BillingRunStatus.Name(run.status).removeprefix("BILLING_RUN_STATUS_").lower(),
                            billed=run.subscriptions_billed, skipped=run.subscriptions_skipped,
                            failed=run.subscriptions_failed)
            if run.status in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise CommandError(f"run {run.id} still {pb.BillingRunStatus.Name(run.status)} after "
                                   f"{timeout_s:g} s (--watch-timeout); `billing runs get {run.id}` follows it")
            time.sleep(POLL_S)
            run = api("GetBillingRun", pb.GetBillingRunRequest(id=run.id)).run


def runs_start(api: Api, args: argparse.Namespace) -> int:
    request = pb.RunBillingRequest(request_id=request_id(args), idempotency_key=args.idempotency_key or "")
    stamp = timestamp(args.as_of, "--as-of")
    if stamp is not None:
        request.as_of.CopyFrom(stamp)
    run = api("RunBilling", request).run
    if args.watch:
        run = watch(api, run, args.watch_timeout)
    emit([run], args, RUN_COLUMNS)
    if run.status == pb.BILLING_RUN_STATUS_FAILED:
        reasons = "; ".join(f.reason for f in run.failures if not f.subscription_id) or "see its failures"
        print(f"billing runs start: run {run.id} failed: {reasons}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    api = argparse.ArgumentParser(add_help=False)
    connect_arguments(api)
    output_arguments(api)
    parents = [common, api]
    runs = sub.add_parser("runs", parents=[common], help="list, show, start billing runs (over the API)")
    verbs = runs.add_subparsers(dest="runs_command", required=True)
    p = verbs.add_parser("list", parents=parents, help="billing runs as JSON lines, newest first")
    p.add_argument("--status", choices=enum_words(pb.BillingRunStatus, "BILLING_RUN_STATUS_"))
    p.add_argument("--created-after", help="RFC 3339, inclusive")
    p.add_argument("--created-before", help="RFC 3339, exclusive")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all, page after page)")
    p.add_argument("--page-size", type=int, default=100, help="rows per List call")
    p.set_defaults(func=ApiCommand(runs_list))
    p = verbs.add_parser("get", parents=parents, help="one billing run by id, with its counters and totals")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(runs_get))
    p = verbs.add_parser("start", parents=parents, help="request a billing run; prints it (--watch: when finished)")
    p.add_argument("--as-of", help="bill periods ended by then, RFC 3339 or `now` (default: now)")
    p.add_argument("--idempotency-key", help="the same key returns the same run (default: a new run)")
    p.add_argument("--request-id", help="idempotency key of the call (default: a new UUID)")
    p.add_argument("--watch", action="store_true", help="follow the run with a progress bar until it finishes; "
                                                        "exit 1 if it failed")
    p.add_argument("--watch-timeout", type=float, default=600.0, help="give up watching after this many seconds")
    p.set_defaults(func=ApiCommand(runs_start))

"""`billing clocks create|get|list|advance|delete`: test clocks over the API (docs/time.md,
"Test clocks"). An advance is a billing run of the clock's subscriptions; `advance --wait`
follows that run with the progress bar of `runs start --watch` and prints the clock once
it is READY at its new time."""
from __future__ import annotations

import argparse
import time

from billing.cli_common import (Api, ApiCommand, Column, CommandError, api_parsers, emit, listing_arguments,
                                print_json, request_id, timestamp)
from billing.v1 import billing_pb2 as pb

CLOCK_COLUMNS: list[Column] = [
    ("id", lambda c: c.get("id")), ("name", lambda c: c.get("name")), ("frozen_time", lambda c: c.get("frozen_time")),
    ("status", lambda c: c.get("status", "").removeprefix("TEST_CLOCK_STATUS_")),
    ("advance_to", lambda c: c.get("advance_to")), ("advance_run", lambda c: c.get("advance_run_id")),
]
POLL_S = 0.5


def clocks_create(api: Api, args: argparse.Namespace) -> int:
    request = pb.CreateTestClockRequest(request_id=request_id(args), name=args.name,
                                        frozen_time=timestamp(args.frozen_time, "--frozen-time"))
    emit([api("CreateTestClock", request).test_clock], args, CLOCK_COLUMNS)
    return 0


def clocks_get(api: Api, args: argparse.Namespace) -> int:
    emit([api("GetTestClock", pb.GetTestClockRequest(id=args.id)).test_clock], args, CLOCK_COLUMNS)
    return 0


def clocks_list(api: Api, args: argparse.Namespace) -> int:
    request = pb.ListTestClocksRequest(page_size=args.page_size)
    emit(api.pages("ListTestClocks", request, "test_clocks", args.limit), args, CLOCK_COLUMNS)
    return 0


def wait_ready(api: Api, clock: pb.TestClock, timeout_s: float) -> pb.TestClock:
    """Follow the advance's run to its end, then the clock to READY (the run's last shard
    sets it in the same transaction, so one read normally suffices)."""
    from billing.cli_runs import watch

    deadline = time.monotonic() + timeout_s
    if clock.advance_run_id:
        run = api("GetBillingRun", pb.GetBillingRunRequest(id=clock.advance_run_id)).run
        run = watch(api, run, timeout_s)
        if run.status == pb.BILLING_RUN_STATUS_FAILED:
            reasons = "; ".join(f.reason for f in run.failures if not f.subscription_id) or "see its failures"
            raise CommandError(f"the advance's billing run {run.id} failed: {reasons} (the clock stays ADVANCING)")
    while clock.status == pb.TEST_CLOCK_STATUS_ADVANCING:
        if time.monotonic() > deadline:
            raise CommandError(f"clock {clock.id} still ADVANCING after {timeout_s:g} s (--wait-timeout); "
                               f"`billing clocks get {clock.id}` follows it")
        time.sleep(POLL_S)
        clock = api("GetTestClock", pb.GetTestClockRequest(id=clock.id)).test_clock
    return clock


def clocks_advance(api: Api, args: argparse.Namespace) -> int:
    request = pb.AdvanceTestClockRequest(request_id=request_id(args), id=args.id,
                                         frozen_time=timestamp(args.to, "--to"))
    clock = api("AdvanceTestClock", request).test_clock
    if args.wait:
        clock = wait_ready(api, clock, args.wait_timeout)
    emit([clock], args, CLOCK_COLUMNS)
    return 0


def clocks_delete(api: Api, args: argparse.Namespace) -> int:
    response = api("DeleteTestClock", pb.DeleteTestClockRequest(request_id=request_id(args), id=args.id))
    # DeleteTestClockResponse has no id, and proto JSON omits a zero count: a record of our own.
    print_json({"id": args.id, "deleted": True, "deleted_subscriptions": response.deleted_subscriptions})
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parents, mutation = api_parsers(common)
    clocks = sub.add_parser("clocks", parents=[common], help="test clocks: create, show, advance, delete "
                                                             "(over the API)")
    verbs = clocks.add_subparsers(dest="clocks_command", required=True)
    p = verbs.add_parser("create", parents=[*parents, mutation], help="a clock, READY at --frozen-time; prints it")
    p.add_argument("--name", required=True, help="1..255 printable characters")
    p.add_argument("--frozen-time", required=True, help="the clock's time, RFC 3339 or `now` (2000-01-01 to before 2100)")
    p.set_defaults(func=ApiCommand(clocks_create))
    p = verbs.add_parser("get", parents=parents, help="one clock by id: its time and status")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(clocks_get))
    p = verbs.add_parser("list", parents=parents, help="the tenant's clocks as JSON lines")
    listing_arguments(p)
    p.set_defaults(func=ApiCommand(clocks_list))
    p = verbs.add_parser("advance", parents=[*parents, mutation],
                         help="move a clock forward to --to, billing every period that ends by then; prints it "
                              "(ADVANCING, or READY at the new time with --wait)")
    p.add_argument("id")
    p.add_argument("--to", required=True, help="the clock's new time, RFC 3339, after its current time")
    p.add_argument("--wait", action="store_true", help="follow the advance's billing run with a progress bar "
                                                       "until the clock is READY; exit 2 if the run failed")
    p.add_argument("--wait-timeout", type=float, default=600.0, help="give up waiting after this many seconds")
    p.set_defaults(func=ApiCommand(clocks_advance))
    p = verbs.add_parser("delete", parents=[*parents, mutation],
                         help="remove a clock with its subscriptions; prints how many subscriptions went")
    p.add_argument("id")
    p.set_defaults(func=ApiCommand(clocks_delete))

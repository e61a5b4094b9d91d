"""Time zones and previews over gRPC: a zoned subscription's periods, PreviewInvoice and
preview_only changes, and each bad path (docs/time.md)."""
from __future__ import annotations

import calendar
import uuid
from datetime import date, datetime, timedelta, timezone

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from billing.domain.zones import zone_info
from billing.v1 import billing_pb2 as pb
from tests.integration.test_api_contract import refused
from tests.integration.test_billing_scale import _invoices, _run, _usage, _weekly_plan
from tests.integration.test_subscriptions_api import make_plan, make_sub, rid, ts

UTC = timezone.utc


def _t(msg) -> datetime:
    return msg.ToDatetime(tzinfo=UTC)


async def _counts(admin_conn, tid: uuid.UUID) -> tuple:
    return tuple([await admin_conn.fetchval(f"select count(*) from {t} where tenant_id = $1", tid)
                  for t in ("outbox", "audit_events", "idempotency_keys", "pending_lines", "billed_periods")])


async def test_a_zoned_subscription_has_calendar_periods_from_local_midnight(stub, tenant, admin_conn):
    plan = await make_plan(stub, tenant)  # monthly
    start = datetime.now(UTC) - timedelta(days=3)
    sub = await make_sub(stub, tenant, plan, start_at=ts(start), time_zone="Australia/Lord_Howe")
    assert sub.time_zone == "Australia/Lord_Howe"
    tz = zone_info("Australia/Lord_Howe")
    end = _t(sub.current_period_end).astimezone(tz)
    assert (end.hour, end.minute, end.second) == (0, 0, 0)
    local = start.astimezone(tz).date()
    year, month = local.year + local.month // 12, local.month % 12 + 1
    assert end.date() == date(year, month, min(local.day, calendar.monthrange(year, month)[1]))  # clamped
    assert _t(sub.current_period_start) == start
    stored = await admin_conn.fetchval("select time_zone from subscriptions where id = $1", uuid.UUID(sub.id))
    assert stored == "Australia/Lord_Howe"
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)).subscription
    assert got.time_zone == "Australia/Lord_Howe"
    # usage lands in the zoned period of its instant; GetUsage knows the zoned period starts
    weekly = await _weekly_plan(stub, tenant)
    zoned = await make_sub(stub, tenant, weekly, start_at=ts(start), time_zone="Asia/Kathmandu")
    recorded = await _usage(stub, tenant, zoned.id, "7", datetime.now(UTC) - timedelta(minutes=5))
    assert (recorded.period_start, recorded.period_end) == (zoned.current_period_start, zoned.current_period_end)
    assert _t(zoned.current_period_end).astimezone(zone_info("Asia/Kathmandu")).time() == datetime.min.time()
    report = await stub.GetUsage(pb.GetUsageRequest(subscription_id=zoned.id, period_start=zoned.current_period_end),
                                 metadata=tenant.md)
    assert report.period_start == zoned.current_period_end
    assert _t(report.period_end) - _t(report.period_start) == timedelta(days=7)  # Nepal has no DST
    # the default stays UTC, with the anchor's time of day as before
    plain = await make_sub(stub, tenant, plan, start_at=ts(start))
    assert plain.time_zone == "UTC"
    assert _t(plain.current_period_end).time() == _t(plain.current_period_start).time()


async def test_an_unknown_time_zone_is_refused_naming_the_field(stub, tenant, admin_conn):
    plan = await make_plan(stub, tenant)
    for bad in ("Mars/Olympus", "../../etc/passwd", "x" * 80):
        req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id="c", plan_id=plan.id, time_zone=bad)
        message, details = await refused(stub.CreateSubscription, req, tenant.md)
        assert [v.field for v in details["BadRequest"].field_violations] == ["time_zone"], message
    assert await admin_conn.fetchval("select count(*) from subscriptions where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == 0


async def test_preview_invoice_equals_what_the_run_then_emits(service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)  # 10.00 a week in arrears + 0.0025 per call
    start = datetime.now(UTC) - timedelta(days=10)
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plan.id, activate=True, start_at=ts(start),
        time_zone="America/St_Johns"), metadata=tenant.md)).subscription
    await _usage(stub, tenant, sub.id, "1000", start + timedelta(hours=1))
    tid = uuid.UUID(tenant.id)
    before = await _counts(admin_conn, tid)
    got = await stub.PreviewInvoice(pb.PreviewInvoiceRequest(subscription_id=sub.id, at=sub.current_period_end),
                                    metadata=tenant.md)
    assert await _counts(admin_conn, tid) == before
    [invoice] = got.invoices
    assert [(ln.kind, ln.amount) for ln in invoice.lines][1:] == [("usage", "2.50")]
    await _run(service, tenant, datetime.now(UTC))
    [emitted] = await _invoices(admin_conn, tid, sub.id)
    assert emitted["invoice_request_id"] == invoice.invoice_request_id
    assert emitted["total"] == invoice.total_amount
    assert [(ln["kind"], ln["amount"], ln["fraction"] or "", ln["period_start_us"]) for ln in emitted["lines"]] == [
        (ln.kind, ln.amount, ln.fraction, ln.period_start.ToMicroseconds()) for ln in invoice.lines]
    # no current period any more -> the next one; unset `at` = now: still the current period
    now_preview = await stub.PreviewInvoice(pb.PreviewInvoiceRequest(subscription_id=sub.id), metadata=tenant.md)
    assert now_preview.invoices[0].period_start == invoice.period_end


async def test_preview_invoice_bad_paths(stub, tenant):
    message, details = await refused(stub.PreviewInvoice, pb.PreviewInvoiceRequest(subscription_id="nope"),
                                     tenant.md)
    assert [v.field for v in details["BadRequest"].field_violations] == ["subscription_id"]
    await refused(stub.PreviewInvoice, pb.PreviewInvoiceRequest(subscription_id=str(uuid.uuid4())), tenant.md,
                  code=grpc.StatusCode.NOT_FOUND)
    plan = await make_plan(stub, tenant)
    pending = await make_sub(stub, tenant, plan, activate=False)
    _, details = await refused(stub.PreviewInvoice, pb.PreviewInvoiceRequest(subscription_id=pending.id), tenant.md,
                               code=grpc.StatusCode.FAILED_PRECONDITION)
    assert details["ErrorInfo"].reason == "NO_CURRENT_PERIOD"
    far = Timestamp(seconds=10**12)  # beyond year 9999
    _, details = await refused(stub.PreviewInvoice, pb.PreviewInvoiceRequest(subscription_id=pending.id, at=far),
                               tenant.md)
    assert [v.field for v in details["BadRequest"].field_violations] == ["at"]


async def test_preview_only_changes_change_nothing_and_show_the_lines(stub, tenant, admin_conn):
    cheap = await make_plan(stub, tenant, base_fee="10.00")
    dear = await make_plan(stub, tenant, base_fee="30.00")
    sub = await make_sub(stub, tenant, cheap, start_at=ts(datetime.now(UTC) - timedelta(days=5)))
    tid = uuid.UUID(tenant.id)
    before = await _counts(admin_conn, tid)
    row = await admin_conn.fetchrow("select * from subscriptions where id = $1", uuid.UUID(sub.id))
    change = await stub.ChangePlan(pb.ChangePlanRequest(
        id=sub.id, new_plan_id=dear.id, timing=pb.CHANGE_TIMING_IMMEDIATELY, preview_only=True), metadata=tenant.md)
    kinds = [ln.kind for ln in change.preview.lines]
    assert kinds and set(kinds) <= {"proration_credit", "proration_charge"}
    assert change.subscription.plan_id == dear.id and change.preview.currency == "EUR"
    cancel = await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY, preview_only=True), metadata=tenant.md)
    assert cancel.subscription.status == pb.SUBSCRIPTION_STATUS_CANCELED and cancel.preview.invoice_now
    pause = await stub.PauseSubscription(pb.PauseSubscriptionRequest(id=sub.id, preview_only=True),
                                         metadata=tenant.md)
    assert pause.subscription.status == pb.SUBSCRIPTION_STATUS_PAUSED
    assert await _counts(admin_conn, tid) == before
    assert await admin_conn.fetchrow("select * from subscriptions where id = $1", uuid.UUID(sub.id)) == row
    # a refusal is a refusal in a preview too
    await refused(stub.ChangePlan, pb.ChangePlanRequest(id=sub.id, new_plan_id=cheap.id, preview_only=True,
                                                        timing=pb.CHANGE_TIMING_IMMEDIATELY), tenant.md,
                  code=grpc.StatusCode.FAILED_PRECONDITION)
    # without preview_only, the request id is still required
    await refused(stub.PauseSubscription, pb.PauseSubscriptionRequest(id=sub.id), tenant.md)

"""billing.v1 messages <-> domain and service values. No rules here: only translation."""
from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from billing.domain.money import decimal_to_str
from billing.domain.pricing import total
from billing.services import invoice_requests
from billing.services.previews import ChangePreview, InvoicePreviews
from billing.services.errors import ValidationError, Violations
from billing.services.subscriptions import SubscriptionPage, SubscriptionView
from billing.domain.discounts import DiscountInput
from billing.domain.entitlements import Feature, FeatureInput, FeatureKind
from billing.domain.plans import PlanInput, TierInput, UsageChargeInput
from billing.services.discounts import DiscountView
from billing.services.entitlements import EntitlementView
from billing.services.plans import Plan
from billing.v1 import billing_pb2 as pb

_UTC_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def enum_value(enum_type, number: int, prefix: str, field: str) -> str:
    """Proto enum number -> the domain's lowercase name; "" for UNSPECIFIED. A number the
    enum does not have is refused here, naming the enum's values as the caller spells them."""
    try:
        name = enum_type.Name(number)
    except ValueError:
        names = ", ".join(n for n in enum_type.keys() if not n.endswith("_UNSPECIFIED"))
        raise ValidationError(field, f"must be one of {names}, got {number}") from None
    return "" if name.endswith("_UNSPECIFIED") else name[len(prefix):].lower()


def enum_number(enum_type, value: str, prefix: str) -> int:
    return enum_type.Value(prefix + value.upper())


def timestamp(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    seconds, nanos = _seconds_nanos(dt)
    return Timestamp(seconds=seconds, nanos=nanos)


def set_time(field: Timestamp, dt: datetime) -> None:
    """Fill a message's Timestamp field in place (no Timestamp made and copied)."""
    field.seconds, field.nanos = _seconds_nanos(dt)


def _seconds_nanos(dt: datetime) -> tuple[int, int]:
    """What `Timestamp.FromDatetime(dt.astimezone(timezone.utc))` sets, by arithmetic: that
    one goes through a time tuple and `calendar.timegm`, a large share of a page of
    subscriptions' conversion. A naive time is local time, as `astimezone` takes it."""
    if dt.tzinfo is None:
        dt = dt.astimezone(timezone.utc)
    delta = dt - _UTC_EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


def optional_time(message, field: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime; None when unset; INVALID_ARGUMENT when out of range."""
    if not message.HasField(field):
        return None
    ts = getattr(message, field)
    try:
        dt = ts.ToDatetime(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise ValidationError(field, "is not a valid timestamp") from None
    if not 1970 <= dt.year <= 9000:
        raise ValidationError(field, "must be between 1970 and 9000")
    return dt


def _dec(value) -> str:
    return "" if value is None else decimal_to_str(value)


def plan_input(req: pb.CreatePlanRequest) -> tuple[PlanInput, list[tuple[str, str]]]:
    """The draft, and the violations of enum numbers the proto does not have (their fields
    are left empty in the draft; `plans.create_plan` reports them with the others)."""
    v = Violations()

    def enum(enum_type, number: int, prefix: str, field: str) -> str:
        return v.check(enum_value, enum_type, number, prefix, field) or ""

    draft = PlanInput(
        code=req.code, name=req.name, description=req.description, currency=req.currency,
        interval=enum(pb.IntervalUnit, req.interval, "INTERVAL_UNIT_", "interval"),
        interval_count=req.interval_count, base_fee=req.base_fee,
        billing_timing=enum(pb.BillingTiming, req.billing_timing, "BILLING_TIMING_", "billing_timing"),
        trial_days=req.trial_days,
        usage_charges=[
            UsageChargeInput(
                metric_code=c.metric_code,
                aggregation=enum(pb.Aggregation, c.aggregation, "AGGREGATION_", f"usage_charges[{i}].aggregation"),
                pricing_model=enum(pb.PricingModel, c.pricing_model, "PRICING_MODEL_",
                                   f"usage_charges[{i}].pricing_model"),
                unit_price=c.unit_price, package_size=c.package_size,
                tiers=[TierInput(up_to=t.up_to, unit_price=t.unit_price, flat_fee=t.flat_fee) for t in c.tiers],
                unique_property=c.unique_property, max_amount=c.max_amount,
                free_units=c.free_units, free_amount=c.free_amount,
                package_rounding=enum(pb.PackageRounding, c.package_rounding, "PACKAGE_ROUNDING_",
                                      f"usage_charges[{i}].package_rounding"),
                zero_usage_flat_fee=c.zero_usage_flat_fee, percentage_rate=c.percentage_rate,
                fixed_fee_per_event=c.fixed_fee_per_event, min_fee_per_event=c.min_fee_per_event,
                max_fee_per_event=c.max_fee_per_event, amount_property=c.amount_property,
                corrections=c.corrections,
            )
            for i, c in enumerate(req.usage_charges)
        ],
        minimum_commitment=req.minimum_commitment,
        features=[
            FeatureInput(code=f.code, kind=enum(pb.FeatureKind, f.kind, "FEATURE_KIND_", f"features[{i}].kind"),
                         value=f.value, metric_code=f.metric_code, limit=f.limit,
                         limit_mode=enum(pb.LimitMode, f.limit_mode, "LIMIT_MODE_", f"features[{i}].limit_mode"))
            for i, f in enumerate(req.features)
        ],
    )
    return draft, v.items


def plan_message(plan: Plan) -> pb.Plan:
    spec = plan.spec
    return pb.Plan(
        id=str(plan.id), code=spec.code, version=plan.version, name=spec.name, description=spec.description,
        currency=spec.currency, interval=enum_number(pb.IntervalUnit, spec.interval, "INTERVAL_UNIT_"),
        interval_count=spec.interval_count, base_fee=decimal_to_str(spec.base_fee),
        billing_timing=enum_number(pb.BillingTiming, spec.billing_timing, "BILLING_TIMING_"),
        trial_days=spec.trial_days,
        usage_charges=[
            pb.UsageCharge(
                metric_code=c.metric_code,
                aggregation=enum_number(pb.Aggregation, c.aggregation, "AGGREGATION_"),
                pricing_model=enum_number(pb.PricingModel, c.pricing_model, "PRICING_MODEL_"),
                unit_price=_dec(c.unit_price), package_size=_dec(c.package_size),
                tiers=[pb.Tier(up_to=_dec(t.up_to), unit_price=_dec(t.unit_price), flat_fee=_dec(t.flat_fee))
                       for t in c.tiers],
                unique_property=c.unique_property or "", max_amount=_dec(c.max_amount),
                free_units=_dec(c.free_units), free_amount=_dec(c.free_amount),
                package_rounding=enum_number(pb.PackageRounding, c.package_rounding, "PACKAGE_ROUNDING_")
                if c.pricing_model == "package" else 0,
                zero_usage_flat_fee=c.zero_usage_flat_fee, percentage_rate=_dec(c.percentage_rate),
                fixed_fee_per_event=_dec(c.fixed_fee_per_event), min_fee_per_event=_dec(c.min_fee_per_event),
                max_fee_per_event=_dec(c.max_fee_per_event), amount_property=c.amount_property or "",
                corrections=c.corrections,
            )
            for c in spec.usage_charges
        ],
        minimum_commitment=decimal_to_str(spec.minimum_commitment),
        features=[feature_message(f) for f in spec.features],
        status=enum_number(pb.PlanStatus, plan.status, "PLAN_STATUS_"),
        created_at=timestamp(plan.created_at), archived_at=timestamp(plan.archived_at),
    )


def subscription_message(view: SubscriptionView) -> pb.Subscription:
    sub = view.subscription
    msg = pb.Subscription(
        id=str(sub.id), customer_id=sub.customer_id, plan_id=str(sub.plan_id), plan_code=view.plan_code,
        status=enum_number(pb.SubscriptionStatus, sub.status.value, "SUBSCRIPTION_STATUS_"),
        cancel_at_period_end=sub.cancel_at_period_end, metadata=dict(sub.metadata), time_zone=sub.time_zone,
        test_clock_id=str(view.test_clock_id) if view.test_clock_id else "",
    )
    for name in ("created_at", "start_at", "billing_anchor", "current_period_start", "current_period_end",
                 "trial_end", "canceled_at", "paused_at", "pause_resumes_at"):
        value = getattr(sub, name)
        if value is not None:
            set_time(getattr(msg, name), value)
    if sub.pending_plan_id is not None:
        msg.pending_change.CopyFrom(pb.PendingPlanChange(
            plan_id=str(sub.pending_plan_id), plan_code=view.pending_plan_code or "",
            effective_at=timestamp(sub.pending_change_at)))
    for entry in view.history:
        msg.history.append(pb.SubscriptionHistoryEntry(
            at=timestamp(entry["at"]), action=entry["action"], actor=entry["actor"],
            from_status=enum_number(pb.SubscriptionStatus, entry["from_status"], "SUBSCRIPTION_STATUS_")
            if entry["from_status"] else 0,
            to_status=enum_number(pb.SubscriptionStatus, entry["to_status"], "SUBSCRIPTION_STATUS_")
            if entry["to_status"] else 0,
            details=entry["details"]))
    return msg


def subscription_page(page: SubscriptionPage) -> pb.ListSubscriptionsResponse:
    return pb.ListSubscriptionsResponse(subscriptions=[subscription_message(v) for v in page.subscriptions],
                                        next_page_token=page.next_page_token)


def usage_report(report) -> pb.GetUsageResponse:
    return pb.GetUsageResponse(
        subscription_id=str(report.subscription_id), period_start=timestamp(report.period_start),
        period_end=timestamp(report.period_end), currency=report.currency,
        metrics=[pb.MetricUsage(
            metric_code=m.metric_code, aggregation=enum_number(pb.Aggregation, m.aggregation, "AGGREGATION_"),
            quantity=decimal_to_str(m.quantity), amount=decimal_to_str(m.amount),
            series=[pb.UsagePoint(at=timestamp(at), quantity=decimal_to_str(q)) for at, q in m.series],
            late_event_count=m.late.event_count, late_quantity_sum=decimal_to_str(m.late.quantity_sum),
            late_billed_event_count=m.late.billed_event_count,
        ) for m in report.metrics],
        total_amount=decimal_to_str(report.total),
    )


def billing_run_message(run) -> pb.BillingRun:
    """A `billing.services.billing_runs.BillingRun` as its message."""
    return pb.BillingRun(
        id=str(run.id), idempotency_key=run.idempotency_key,
        status=enum_number(pb.BillingRunStatus, run.status, "BILLING_RUN_STATUS_"),
        as_of=timestamp(run.as_of), created_at=timestamp(run.created_at), started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at), subscriptions_due=run.subscriptions_due,
        subscriptions_billed=run.subscriptions_billed, subscriptions_skipped=run.subscriptions_skipped,
        subscriptions_failed=run.subscriptions_failed,
        failures=[pb.BillingRunFailure(subscription_id=s, reason=r) for s, r in run.failures],
        totals=[pb.CurrencyTotal(currency=c, amount=a) for c, a in run.totals],
        test_clock_id=str(run.test_clock_id) if run.test_clock_id else "",
    )


def billing_run_page(page) -> pb.ListBillingRunsResponse:
    return pb.ListBillingRunsResponse(runs=[billing_run_message(r) for r in page.runs],
                                      next_page_token=page.next_page_token)


def discount_input(req: pb.CreateDiscountRequest) -> DiscountInput:
    kind = enum_value(pb.DiscountKind, req.kind, "DISCOUNT_KIND_", "kind")
    return DiscountInput(kind=kind, value=req.value, applies_to=list(req.applies_to), periods=req.periods)


def discount_message(d: DiscountView) -> pb.Discount:
    return pb.Discount(
        id=str(d.id), subscription_id=str(d.subscription_id),
        kind=enum_number(pb.DiscountKind, d.kind.value, "DISCOUNT_KIND_"), value=decimal_to_str(d.value),
        applies_to=list(d.applies_to), periods=d.periods or 0, periods_used=min(d.used, d.periods or d.used),
        created_at=timestamp(d.created_at), deleted_at=timestamp(d.deleted_at),
    )


def threshold_message(t) -> pb.Threshold:
    """A `billing.services.thresholds.ThresholdView` as its message."""
    return pb.Threshold(id=str(t.id), subscription_id=str(t.subscription_id or ""), metric_code=t.metric_code,
                        value=decimal_to_str(t.value), recurring=t.recurring, aggregation=t.aggregation,
                        created_at=timestamp(t.created_at), deleted_at=timestamp(t.deleted_at), measure=t.measure,
                        percent=decimal_to_str(t.percent) if t.percent is not None else "",
                        invoice_on_cross=t.invoice_on_cross, plan_id=str(t.plan_id or ""))


def credit_grant_message(g) -> pb.CreditGrant:
    """A `billing.services.credits.GrantView` as its message."""
    return pb.CreditGrant(
        id=str(g.id), customer_id=g.customer_id, subscription_id=str(g.subscription_id or ""), currency=g.currency,
        granted=decimal_to_str(g.granted), applied=decimal_to_str(g.applied), expired=decimal_to_str(g.expired),
        voided=decimal_to_str(g.voided), remaining=decimal_to_str(g.remaining), priority=g.priority,
        effective_at=timestamp(g.effective_at), expires_at=timestamp(g.expires_at), description=g.description,
        status=g.status, created_at=timestamp(g.created_at), voided_at=timestamp(g.voided_at),
    )


def _micros(us: int | None) -> Timestamp | None:
    if us is None:
        return None
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def invoice_lines(lines) -> list[pb.InvoiceLine]:
    """Lines as the InvoiceRequest record carries them (`invoice_requests.line_record`)."""
    out = []
    for ln in lines:
        r = invoice_requests.line_record(ln)
        out.append(pb.InvoiceLine(
            kind=r["kind"], description=r["description"], metric_code=r["metric_code"] or "",
            quantity=r["quantity"], unit_price=r["unit_price"], amount=r["amount"],
            period_start=_micros(r["period_start_us"]), period_end=_micros(r["period_end_us"]),
            fraction=r["fraction"] or "", original_period_start=_micros(r["original_period_start_us"])))
    return out


def change_preview(preview: ChangePreview | None) -> pb.ChangePreview | None:
    if preview is None:
        return None
    return pb.ChangePreview(lines=invoice_lines(preview.lines), total_amount=decimal_to_str(total(preview.lines)),
                            currency=preview.currency, invoice_now=preview.invoice_now)


def invoice_previews(found: InvoicePreviews) -> pb.PreviewInvoiceResponse:
    return pb.PreviewInvoiceResponse(subscription_id=str(found.subscription_id), invoices=[
        pb.InvoicePreview(invoice_request_id=str(c.invoice_request_id), period_start=timestamp(c.period_start),
                          period_end=timestamp(c.period_end), currency=c.currency, lines=invoice_lines(c.lines),
                          total_amount=decimal_to_str(c.total))
        for c in found.invoices])


def test_clock_message(clock) -> pb.TestClock:
    """A `billing.services.test_clocks.TestClock` as its message."""
    return pb.TestClock(
        id=str(clock.id), name=clock.name, frozen_time=timestamp(clock.frozen_time),
        status=enum_number(pb.TestClockStatus, clock.status, "TEST_CLOCK_STATUS_"),
        advance_to=timestamp(clock.advance_to), advance_run_id=str(clock.advance_run_id or ""),
        created_at=timestamp(clock.created_at))


def feature_message(f: Feature) -> pb.Feature:
    metered = f.kind is FeatureKind.METERED
    return pb.Feature(code=f.code, kind=enum_number(pb.FeatureKind, f.kind, "FEATURE_KIND_"), value=f.value,
                      metric_code=f.metric_code or "", limit=_dec(f.limit),
                      limit_mode=enum_number(pb.LimitMode, f.limit_mode, "LIMIT_MODE_") if metered else 0)


_FEATURE_KINDS = {k: enum_number(pb.FeatureKind, k, "FEATURE_KIND_") for k in FeatureKind}


def entitlement_message(e: EntitlementView) -> pb.Entitlement:
    d, f = e.decision, e.feature
    if f is None:
        kind, metric = 0, ""
    else:
        kind, metric = _FEATURE_KINDS[f.kind], f.metric_code or ""
    return pb.Entitlement(
        feature_code=e.feature_code, kind=kind, allowed=d.allowed, value=d.value, used=_dec(d.used),
        remaining=_dec(d.remaining), limit=_dec(d.limit), reason=d.reason.value, over_limit=d.over_limit,
        metric_code=metric, period_start=timestamp(e.period_start), period_end=timestamp(e.period_end))

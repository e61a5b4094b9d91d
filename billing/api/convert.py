"""billing.v1 messages <-> domain and service values. No rules here: only translation."""
from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from billing.domain.money import decimal_to_str
from billing.domain.plans import PlanInput, TierInput, UsageChargeInput
from billing.services.plans import Plan
from billing.v1 import billing_pb2 as pb


def enum_value(enum_type, number: int, prefix: str) -> str:
    """Proto enum number -> the domain's lowercase name; "" for UNSPECIFIED or unknown numbers."""
    try:
        name = enum_type.Name(number)
    except ValueError:
        return f"<unknown {number}>"
    return "" if name.endswith("_UNSPECIFIED") else name[len(prefix):].lower()


def enum_number(enum_type, value: str, prefix: str) -> int:
    return enum_type.Value(prefix + value.upper())


def timestamp(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(timezone.utc))
    return ts


def _dec(value) -> str:
    return "" if value is None else decimal_to_str(value)


def plan_input(req: pb.CreatePlanRequest) -> PlanInput:
    return PlanInput(
        code=req.code, name=req.name, description=req.description, currency=req.currency,
        interval=enum_value(pb.IntervalUnit, req.interval, "INTERVAL_UNIT_"),
        interval_count=req.interval_count, base_fee=req.base_fee,
        billing_timing=enum_value(pb.BillingTiming, req.billing_timing, "BILLING_TIMING_"),
        trial_days=req.trial_days,
        usage_charges=[
            UsageChargeInput(
                metric_code=c.metric_code,
                aggregation=enum_value(pb.Aggregation, c.aggregation, "AGGREGATION_"),
                pricing_model=enum_value(pb.PricingModel, c.pricing_model, "PRICING_MODEL_"),
                unit_price=c.unit_price, package_size=c.package_size,
                tiers=[TierInput(up_to=t.up_to, unit_price=t.unit_price, flat_fee=t.flat_fee) for t in c.tiers],
                unique_property=c.unique_property,
            )
            for c in req.usage_charges
        ],
    )


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
                unique_property=c.unique_property or "",
            )
            for c in spec.usage_charges
        ],
        status=enum_number(pb.PlanStatus, plan.status, "PLAN_STATUS_"),
        created_at=timestamp(plan.created_at), archived_at=timestamp(plan.archived_at),
    )

"""Entitlements: the plan's features (validation, stored form) and the decision rule."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from billing.domain.aggregation import Gauge, PeriodUsage
from billing.domain.entitlements import (
    EventCounts, Feature, FeatureInput, FeatureKind, LimitMode, Reason, change_data, counting_charge, decide,
    entitled_to, event_counts, metered_used,
)
from billing.domain.periods import to_us
from billing.domain.pricing import price_usage
from billing.domain.errors import ValidationError
from billing.domain.plan_storage import plan_from_dict, plan_to_dict
from billing.domain.plan_validation import parse_plan
from billing.domain.plans import PlanInput, UsageChargeInput

CALLS = UsageChargeInput("api_calls", "sum", "per_unit", "0.01")
SSO = Feature("sso", FeatureKind.BOOLEAN)
TIER = Feature("tier", FeatureKind.STATIC, value="gold")
HARD = Feature("calls", FeatureKind.METERED, metric_code="api_calls", limit=Decimal(100))
SOFT = Feature("calls", FeatureKind.METERED, metric_code="api_calls", limit=Decimal(100), limit_mode=LimitMode.SOFT)


def plan(*features: FeatureInput, charges=(CALLS,)) -> PlanInput:
    return PlanInput("pro", "Pro", "EUR", "month", 1, "10", "in_arrears", 0, list(charges), features=list(features))


def violations(inp: PlanInput) -> dict[str, str]:
    with pytest.raises(ValidationError) as err:
        parse_plan(inp)
    return dict(err.value.violations)


def test_three_kinds_parse_and_round_trip_the_stored_form():
    spec = parse_plan(plan(FeatureInput("sso", "boolean"), FeatureInput("tier", "static", value="gold"),
                           FeatureInput("calls", "metered", metric_code="api_calls", limit="100", limit_mode="soft")))
    assert spec.features == (SSO, TIER, SOFT)
    assert plan_from_dict(plan_to_dict(spec)) == spec
    # limit_mode defaults to hard
    assert parse_plan(plan(FeatureInput("calls", "metered", metric_code="api_calls", limit="100"))).features == (HARD,)


def test_a_plan_without_features_is_stored_as_before_and_old_plans_read_unchanged():
    spec = parse_plan(plan())
    stored = plan_to_dict(spec)
    assert "features" not in stored
    assert plan_from_dict(stored).features == ()


def test_each_bad_feature_names_its_field():
    got = violations(plan(
        FeatureInput("", "boolean"),
        FeatureInput("Bad Code", "boolean"),
        FeatureInput("k", ""),
        FeatureInput("b", "boolean", value="x"),
        FeatureInput("s", "static"),
        FeatureInput("m", "metered", metric_code="nope", limit="1"),
        FeatureInput("m2", "metered", metric_code="api_calls"),
        FeatureInput("m3", "metered", metric_code="api_calls", limit="-1"),
        FeatureInput("m4", "metered", metric_code="api_calls", limit="1", limit_mode="sometimes"),
        FeatureInput("s2", "static", value="v", limit="5"),
        FeatureInput("sso", "boolean"),
        FeatureInput("sso", "boolean"),
        FeatureInput("x", "weird"),
    ))
    assert set(got) == {f"features[{i}].{f}" for i, f in [
        (0, "code"), (1, "code"), (2, "kind"), (3, "value"), (4, "value"), (5, "metric_code"), (6, "limit"),
        (7, "limit"), (8, "limit_mode"), (9, "limit"), (11, "code"), (12, "kind")]}
    assert "duplicates features[10].code" in got["features[11].code"]
    assert got["features[2].kind"] == "is required"
    assert got["features[12].kind"] == "must be one of boolean, static, metered, got 'weird'"


def test_too_many_features():
    got = violations(plan(*[FeatureInput(f"f{i}", "boolean") for i in range(51)]))
    assert "at most 50" in got["features"]


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_entitled_statuses_get_every_kind(status):
    assert decide(SSO, status, None).allowed
    d = decide(TIER, status, None)
    assert d.allowed and d.value == "gold" and d.reason is Reason.ENTITLED


@pytest.mark.parametrize("status,reason", [("pending", Reason.SUBSCRIPTION_PENDING),
                                           ("paused", Reason.SUBSCRIPTION_PAUSED),
                                           ("canceled", Reason.SUBSCRIPTION_CANCELED)])
def test_pending_paused_and_canceled_get_nothing(status, reason):
    for feature in (SSO, TIER, HARD, SOFT, None):
        d = decide(feature, status, Decimal(0))
        assert not d.allowed and d.reason is reason and d.value == "" and d.used is None


def test_a_feature_not_in_the_plan_is_denied():
    d = decide(None, "active", None)
    assert not d.allowed and d.reason is Reason.FEATURE_NOT_IN_PLAN


def test_hard_limit_allows_while_used_is_below_it():
    d = decide(HARD, "active", Decimal("99.5"))
    assert d.allowed and d.used == Decimal("99.5") and d.remaining == Decimal("0.5") and d.limit == 100
    assert not d.over_limit
    d = decide(HARD, "active", Decimal(100))
    assert not d.allowed and d.reason is Reason.LIMIT_REACHED and d.remaining == 0 and d.over_limit
    d = decide(HARD, "active", Decimal(250))
    assert not d.allowed and d.remaining == 0
    d = decide(HARD, "active", None)  # no usage yet
    assert d.allowed and d.used == 0 and d.remaining == 100


def test_soft_limit_always_allows_and_flags_over_limit():
    assert not decide(SOFT, "active", Decimal(10)).over_limit
    d = decide(SOFT, "active", Decimal(150))
    assert d.allowed and d.over_limit and d.reason is Reason.OVER_SOFT_LIMIT and d.remaining == 0


def test_a_zero_limit_denies_a_hard_feature_from_the_start():
    zero = Feature("calls", FeatureKind.METERED, metric_code="api_calls", limit=Decimal(0))
    assert not decide(zero, "active", None).allowed


def test_entitled_to():
    assert entitled_to("active", (SSO,)) == entitled_to("trialing", (SSO,)) == (SSO,)
    assert entitled_to("paused", (SSO,)) == entitled_to("pending", (SSO,)) == entitled_to("canceled", (SSO,)) == ()


def test_change_data_of_each_lifecycle_change():
    f1, f2 = (SSO, TIER), (SSO,)
    assert change_data(None, ("pending", "p1", f1), "subscription.created") is None
    assert change_data(("pending", "p1", f1), ("active", "p1", f1), "subscription.activated") == {
        "cause_event": "subscription.activated", "entitled": "true", "plan_id": "p1"}
    assert change_data(None, ("trialing", "p1", f1), "subscription.trial_started")["entitled"] == "true"
    assert change_data(("trialing", "p1", f1), ("active", "p1", f1), "subscription.trial_ended") is None
    assert change_data(("active", "p1", f1), ("paused", "p1", f1), "subscription.paused")["entitled"] == "false"
    assert change_data(("active", "p1", f1), ("canceled", "p1", f1), "subscription.canceled")["entitled"] == "false"
    assert change_data(("active", "p1", f1), ("active", "p2", f2), "subscription.plan_changed") == {
        "cause_event": "subscription.plan_changed", "entitled": "true", "plan_id": "p2", "old_plan_id": "p1"}
    # Nothing the subscription may use changes: a plan change while paused, between plans
    # with the same features, and any change of a plan without features.
    assert change_data(("paused", "p1", f1), ("paused", "p2", f2), "subscription.plan_changed") is None
    assert change_data(("active", "p1", f1), ("active", "p2", f1), "subscription.plan_changed") is None
    assert change_data(("active", "p1", ()), ("paused", "p1", ()), "subscription.paused") is None


# ----------------------------------------------------------------------- a metered feature's used

_START, _END = datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2026, 12, 31, tzinfo=timezone.utc)


def test_used_is_the_metric_aggregated_as_its_charge_aggregates_it():
    storage = UsageChargeInput("storage", "max", "per_unit", "1")
    spec = parse_plan(plan(FeatureInput("calls", "metered", metric_code="api_calls", limit="100"),
                           charges=(storage, UsageChargeInput("api_calls", "max", "per_unit", "1"))))
    feature = spec.features[0]
    assert counting_charge(spec, feature) is spec.usage_charges[1]
    usage = {"api_calls": PeriodUsage(quantity_sum=Decimal(30), quantity_max=Decimal(7))}
    assert metered_used(spec, feature, usage, _START, _END) == 7  # max, not the sum
    assert metered_used(spec, feature, {}, _START, _END) == 0  # no usage yet
    assert event_counts(spec.usage_charges[1]) == EventCounts()


def test_a_unique_count_and_a_weighted_sum_are_counted_from_the_events():
    seats = UsageChargeInput("seats", "unique_count", "per_unit", "1", unique_property="user_id")
    gpus = UsageChargeInput("gpus", "weighted_sum", "per_unit", "1")
    llm = UsageChargeInput("llm", "count", "dynamic", amount_property="cost")
    spec = parse_plan(plan(FeatureInput("seats", "metered", metric_code="seats", limit="3"),
                           FeatureInput("gpus", "metered", metric_code="gpus", limit="3"),
                           FeatureInput("llm", "metered", metric_code="llm", limit="3"), charges=(seats, gpus, llm)))
    by_code = {f.code: f for f in spec.features}
    assert [event_counts(c) for c in spec.usage_charges] == [EventCounts(unique_property="user_id"),
                                                            EventCounts(gauge=True), EventCounts()]
    assert metered_used(spec, by_code["seats"], {"seats": PeriodUsage(event_count=5, unique_count=2)},
                        _START, _END) == 2
    assert metered_used(spec, by_code["llm"], {"llm": PeriodUsage(event_count=5, amount_sum=Decimal(9))},
                        _START, _END) == 5  # the prices do not count, the events do
    # A level of 2 all period, raised to 4 at half time: 3 on average, as the close prices it.
    half = to_us(_START) + (to_us(_END) - to_us(_START)) // 2
    gauge = Gauge(Decimal(2), ((half, Decimal(2)),))
    assert metered_used(spec, by_code["gpus"], {"gpus": PeriodUsage(gauge=gauge)}, _START, _END) == 3
    priced = {p.charge.metric_code: p.quantity for p in price_usage(spec, {"gpus": PeriodUsage(gauge=gauge)},
                                                                   _START, _END)}
    assert priced["gpus"] == 3

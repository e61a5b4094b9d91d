"""Shares of a limit, measures and plan-scoped alert ids of usage thresholds
(billing/domain/thresholds.py, docs/alerts.md)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from billing.domain.entitlements import Feature, FeatureKind
from billing.domain.errors import ValidationError
from billing.domain.plans import BillingTiming, IntervalUnit, PlanSpec
from billing.domain.thresholds import AMOUNT, alert_id, choose_value, parse_measure, parse_percent, share_of


def _plan(commitment: str = "0", features: tuple[Feature, ...] = ()) -> PlanSpec:
    return PlanSpec("p", "P", "", "EUR", IntervalUnit.MONTH, 1, D(0), BillingTiming.IN_ARREARS, 0, (),
                    minimum_commitment=D(commitment), features=features)


METERED = Feature("calls-quota", FeatureKind.METERED, metric_code="calls", limit=D("1000"))


def _field(fn, *args) -> str:
    with pytest.raises(ValidationError) as info:
        fn(*args)
    return info.value.violations[0][0]


def test_a_quantity_share_is_of_the_metered_entitlement_limit_exactly():
    plan = _plan(features=(Feature("sso", FeatureKind.BOOLEAN), METERED))
    assert share_of(plan, "quantity", "calls", D("80")) == D("800")
    assert share_of(plan, "quantity", "calls", D("33.3333")) == D("333.333")
    assert share_of(plan, "quantity", "calls", D("120")) == D("1200")  # above the limit: allowed


def test_an_amount_share_is_of_the_minimum_commitment():
    assert share_of(_plan(commitment="333.33"), AMOUNT, "", D("50")) == D("166.665")


def test_no_limit_to_take_a_share_of_names_percent():
    assert _field(share_of, _plan(), AMOUNT, "", D("50")) == "percent"
    assert _field(share_of, _plan(features=(METERED,)), "quantity", "storage", D("50")) == "percent"


@pytest.mark.parametrize("text", ["0", "-5", "1000.5", "abc", "5.12345", "", "1e2"])
def test_bad_percents_name_percent(text):
    assert _field(parse_percent, text) == "percent"


def test_value_or_percent_not_both_and_not_neither():
    assert choose_value("10", "") == (D("10"), None)
    assert choose_value("", "80") == (None, D("80"))
    assert _field(choose_value, "10", "80") == "percent"
    assert _field(choose_value, "", "") == "value"


def test_measures():
    assert parse_measure("") == parse_measure("quantity") == "quantity"
    assert parse_measure("amount") == AMOUNT
    assert _field(parse_measure, "money") == "measure"


def test_a_plan_thresholds_alert_id_names_the_subscription():
    t, key = uuid.uuid4(), datetime(2026, 1, 1, tzinfo=timezone.utc)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert alert_id(t, key, a) != alert_id(t, key, b) != alert_id(t, key)
    assert alert_id(t, key, a) == alert_id(t, key, a)
    assert alert_id(t, key) == uuid.uuid5(uuid.UUID("5b1f4a9e-2d4c-4f0e-9a57-6c1d2e3f4a5b"), f"{t}/{key.isoformat()}")

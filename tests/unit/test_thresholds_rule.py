"""The crossing rule of usage thresholds (billing/domain/thresholds.py, docs/alerts.md)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from billing import codec
from billing.domain.errors import ValidationError
from billing.domain.plans import Aggregation
from billing.domain.thresholds import ONCE_KEY, alert_id, crossed, crossing_key, measure_of, parse_value


def test_crossed_when_the_total_reaches_the_value():
    assert crossed(Decimal("10"), Decimal("10"))
    assert crossed(Decimal("10.000000000001"), Decimal("10"))
    assert not crossed(Decimal("9.999999999999"), Decimal("10"))
    assert not crossed(None, Decimal("0"))  # no usage crosses nothing, not even 0
    assert crossed(Decimal("0"), Decimal("0"))


def test_a_recurring_threshold_is_keyed_by_its_period_a_one_off_once_ever():
    p1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    p2 = datetime(2026, 2, 1, tzinfo=timezone.utc)
    assert crossing_key(True, p1) == p1 and crossing_key(True, p2) == p2
    assert crossing_key(False, p1) == crossing_key(False, p2) == ONCE_KEY


def test_alert_id_is_deterministic_per_threshold_and_period():
    t = uuid.uuid4()
    p1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    p2 = datetime(2026, 2, 1, tzinfo=timezone.utc)
    assert alert_id(t, p1) == alert_id(t, p1)
    assert len({alert_id(t, p1), alert_id(t, p2), alert_id(uuid.uuid4(), p1)}) == 3


def test_measures_follow_the_charge_aggregation():
    assert measure_of(Aggregation.SUM) == "quantity_sum"
    assert measure_of(Aggregation.COUNT) == "event_count"
    assert measure_of(Aggregation.MAX) == "quantity_max"
    assert measure_of(Aggregation.LATEST) == "latest_quantity"
    assert measure_of(Aggregation.UNIQUE_COUNT) is None
    assert measure_of(Aggregation.WEIGHTED_SUM) is None


@pytest.mark.parametrize("text, fragment", [("", "required"), ("-1", "negative"), ("1e3", "decimal"),
                                            ("abc", "decimal"), ("1.0000000000001", "decimal")])
def test_bad_values_name_the_field(text, fragment):
    with pytest.raises(ValidationError) as info:
        parse_value(text)
    assert info.value.violations[0][0] == "value" and fragment in info.value.violations[0][1]


def test_good_values():
    assert parse_value("0") == 0 and parse_value("10.5") == Decimal("10.5")


def test_the_alert_round_trips_through_its_avro_schema():
    record = {"alert_id": str(uuid.uuid4()), "type": "usage.threshold_crossed", "tenant_id": str(uuid.uuid4()),
              "subscription_id": str(uuid.uuid4()), "threshold_id": str(uuid.uuid4()), "metric_code": "calls",
              "threshold_value": "10", "quantity": "12", "recurring": True, "period_start_us": 1,
              "period_end_us": 2, "crossed_at_us": 3}
    # the fields added for amount thresholds read as their defaults when not written
    assert codec.decode(codec.Schema.USAGE_ALERT, codec.encode(codec.Schema.USAGE_ALERT, record)) == {
        **record, "measure": "quantity", "currency": None, "invoice_request_id": None}
    amount = {**record, "metric_code": "", "measure": "amount", "currency": "EUR",
              "invoice_request_id": str(uuid.uuid4())}
    assert codec.decode(codec.Schema.USAGE_ALERT, codec.encode(codec.Schema.USAGE_ALERT, amount)) == amount

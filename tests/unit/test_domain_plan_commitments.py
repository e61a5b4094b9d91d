"""Plan fields of commitments and caps: validation naming the field, storage round trip,
and plans stored before the fields existed."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest

from billing.domain.errors import ValidationError
from billing.domain.plan_storage import plan_from_dict, plan_to_dict
from billing.domain.plan_validation import parse_plan
from billing.domain.plans import PlanInput, UsageChargeInput

CALLS = UsageChargeInput("calls", "sum", "per_unit", unit_price="0.001")


def _plan(**kw) -> PlanInput:
    base = PlanInput(code="pro", name="Pro", currency="EUR", interval="month", interval_count=1, base_fee="10",
                     billing_timing="in_arrears", trial_days=0, usage_charges=(CALLS,))
    return replace(base, **kw)


def test_commitment_and_cap_parse_and_round_trip():
    spec = parse_plan(_plan(minimum_commitment="100.50", usage_charges=(replace(CALLS, max_amount="25.00"),)))
    assert spec.minimum_commitment == D("100.50") and spec.usage_charges[0].max_amount == D("25.00")
    d = plan_to_dict(spec)
    assert (d["minimum_commitment"], d["usage_charges"][0]["max_amount"]) == ("100.50", "25.00")
    assert plan_from_dict(d) == spec


def test_unset_means_none():
    spec = parse_plan(_plan())
    assert spec.minimum_commitment == 0 and spec.usage_charges[0].max_amount is None


def test_a_plan_stored_before_the_fields_reads_as_none():
    d = plan_to_dict(parse_plan(_plan()))
    del d["minimum_commitment"]
    assert "max_amount" not in d["usage_charges"][0]  # written only when set
    spec = plan_from_dict(d)
    assert spec.minimum_commitment == 0 and spec.usage_charges[0].max_amount is None


@pytest.mark.parametrize("overrides, field", [
    ({"minimum_commitment": "-1"}, "minimum_commitment"),
    ({"minimum_commitment": "1.005"}, "minimum_commitment"),  # EUR: 2 decimals
    ({"minimum_commitment": "abc"}, "minimum_commitment"),
    ({"usage_charges": (replace(CALLS, max_amount="0"),)}, "usage_charges[0].max_amount"),
    ({"usage_charges": (replace(CALLS, max_amount="-3"),)}, "usage_charges[0].max_amount"),
    ({"usage_charges": (replace(CALLS, max_amount="0.001"),)}, "usage_charges[0].max_amount"),
    ({"currency": "JPY", "base_fee": "10", "minimum_commitment": "10.5"}, "minimum_commitment"),
])
def test_bad_values_name_their_field(overrides, field):
    with pytest.raises(ValidationError) as e:
        parse_plan(_plan(**overrides))
    assert [f for f, _ in e.value.violations] == [field]

"""The audit row of a period close (billing.services.period_writes._diff): the fields the
close changed and the status, before and after, and the subscription columns to write."""
from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone

import pytest

from billing.domain.lifecycle import SubscriptionStatus as S
from billing.domain.subscriptions import Subscription
from billing.services.period_writes import _diff

JAN, FEB, MAR = (datetime(2026, m, 1, tzinfo=timezone.utc) for m in (1, 2, 3))


def _sub(**kw) -> Subscription:
    base = dict(id=uuid.UUID(int=7), customer_id="c", plan_id=uuid.UUID(int=1), status=S.ACTIVE, created_at=JAN,
                start_at=JAN, billing_anchor=JAN, trial_days=0, current_period_start=JAN, current_period_end=FEB)
    base.update(kw)
    return Subscription(**base)


def _reference(before: Subscription, after: Subscription) -> tuple[dict, dict, set[str]]:
    """Field by field, as the audit trail defines it."""
    b, a = {"status": before.status.value}, {"status": after.status.value}
    for f in dataclasses.fields(Subscription):
        x, y = getattr(before, f.name), getattr(after, f.name)
        if f.name != "status" and x != y:
            b[f.name], a[f.name] = x, y
    columns = {k for k in b if k != "status"} | ({"status"} if before.status != after.status else set())
    return b, a, columns


@pytest.mark.parametrize("after", [
    _sub(current_period_start=FEB, current_period_end=MAR),  # a period advanced
    _sub(status=S.CANCELED, canceled_at=FEB, current_period_start=FEB, current_period_end=MAR),  # canceled
    _sub(plan_id=uuid.UUID(int=2), billing_anchor=FEB, current_period_start=FEB, current_period_end=MAR),
    _sub(),  # nothing changed: the status only, and no column
])
def test_the_changed_fields_and_the_status_before_and_after(after):
    before = _sub()
    columns: set[str] = {"kept"}  # a chunk's set: earlier closes' columns stay
    b, a = _diff(before, after, columns)
    ref_b, ref_a, ref_columns = _reference(before, after)
    assert (b, a) == (ref_b, ref_a)
    assert columns == ref_columns | {"kept"}


def test_a_trial_that_ended_writes_the_status_column():
    columns: set[str] = set()
    b, a = _diff(_sub(status=S.TRIALING), _sub(status=S.ACTIVE, trial_end=FEB), columns)
    assert (b["status"], a["status"]) == ("trialing", "active")
    assert columns == {"status", "trial_end"}

"""A subscription as JSON: the audit rows' before/after and the idempotent outcomes of its changes."""
from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import datetime
from typing import Mapping

from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.subscriptions import Subscription

__all__ = ["from_snapshot", "snapshot"]

_TIMES = ("created_at", "start_at", "billing_anchor", "current_period_start", "current_period_end", "trial_end",
          "canceled_at", "paused_at", "pause_resumes_at", "pending_change_at", "period_fee_from")
_IDS = ("id", "plan_id", "pending_plan_id")
_FIELDS = tuple(f.name for f in fields(Subscription))


def snapshot(sub: Subscription) -> dict:
    d = {f: getattr(sub, f) for f in _FIELDS}  # not asdict: it deep-copies every field
    for k in _TIMES:
        d[k] = d[k].isoformat() if d[k] else None
    for k in _IDS:
        d[k] = str(d[k]) if d[k] else None
    d["status"] = sub.status.value
    d["metadata"] = dict(sub.metadata)
    return d


def from_snapshot(d: Mapping) -> Subscription:
    values = dict(d)
    for k in _TIMES:
        values[k] = datetime.fromisoformat(values[k]) if values.get(k) else None
    for k in _IDS:
        values[k] = uuid.UUID(values[k]) if values[k] else None
    values["status"] = SubscriptionStatus(values["status"])
    return Subscription(**values)

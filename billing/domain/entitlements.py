"""Entitlements: the features a plan lists, their validation, and the pure decision of
whether a subscription may use one now (docs/entitlements.md).

Three kinds of feature:

* ``boolean``: on when the plan lists it (a plan that does not list a feature does not
  grant it: a check answers ``feature_not_in_plan``).
* ``static``: a value the product reads (a limit it enforces itself, a tier name), 1..200
  characters.
* ``metered``: a usage limit per billing period on one of the plan's metrics (the metric of
  one of its usage charges, aggregated as that charge aggregates it). ``hard``: allowed while
  ``used < limit``; ``soft``: always allowed, flagged ``over_limit`` once ``used >= limit``.

Who is entitled: an ``active`` or ``trialing`` subscription gets every feature of its plan
(a trial is the plan's features, not a lesser set); ``pending``, ``paused`` and ``canceled``
subscriptions get nothing, whatever the plan lists. A cancel at period end takes effect at
the period's end: until then the subscription is active and keeps its features.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from datetime import datetime
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

from billing.domain.errors import ValidationError, Violations, enum_field, text_field
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import parse_decimal

if TYPE_CHECKING:  # domain/plans imports this module: the aggregation is imported where it is used
    from billing.domain.aggregation import PeriodUsage
    from billing.domain.plans import PlanSpec, UsageCharge

__all__ = [
    "FeatureKind", "LimitMode", "FeatureInput", "Feature", "Decision", "Reason", "MAX_FEATURES",
    "ENTITLED_STATUSES", "State", "parse_features", "decide", "entitled_to", "change_data", "counting_charge",
    "EventCounts", "event_counts", "metered_used",
]

MAX_FEATURES = 50
VALUE_MAX_LEN = 200
LIMIT_MAX_SCALE = 12
_CODE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)

#: The statuses that get the plan's features.
ENTITLED_STATUSES = frozenset({SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING})


class FeatureKind(StrEnum):
    BOOLEAN = "boolean"
    STATIC = "static"
    METERED = "metered"


class LimitMode(StrEnum):
    HARD = "hard"  # allowed while used < limit
    SOFT = "soft"  # always allowed; over_limit once used >= limit


class Reason(StrEnum):
    ENTITLED = "entitled"
    OVER_SOFT_LIMIT = "over_soft_limit"  # allowed, over_limit
    LIMIT_REACHED = "limit_reached"  # hard limit: denied
    FEATURE_NOT_IN_PLAN = "feature_not_in_plan"
    SUBSCRIPTION_PENDING = "subscription_pending"
    SUBSCRIPTION_PAUSED = "subscription_paused"
    SUBSCRIPTION_CANCELED = "subscription_canceled"


@dataclass(frozen=True)
class FeatureInput:
    code: str
    kind: str
    value: str = ""  # static only
    metric_code: str = ""  # metered only
    limit: str = ""  # metered only: decimal >= 0
    limit_mode: str = ""  # metered only: hard (default) | soft


@dataclass(frozen=True)
class Feature:
    code: str
    kind: FeatureKind
    value: str = ""
    metric_code: str | None = None
    limit: Decimal | None = None
    limit_mode: LimitMode = LimitMode.HARD


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    value: str = ""
    used: Decimal | None = None  # metered only
    limit: Decimal | None = None
    remaining: Decimal | None = None  # limit - used, never below 0
    over_limit: bool = False


# ----------------------------------------------------------------------- validation


def _empty(value: object, field: str, kind: FeatureKind) -> None:
    if text_field(value, field) != "":
        raise ValidationError(field, f"must be empty for kind '{kind.value}'")


def _parse_feature(f: object, field: str, metrics: Collection[str]) -> Feature:
    if not isinstance(f, FeatureInput):
        raise ValidationError(field, "must be a feature")
    code = text_field(f.code, f"{field}.code")
    if code == "":
        raise ValidationError(f"{field}.code", "is required")
    if _CODE_RE.fullmatch(code) is None:
        raise ValidationError(f"{field}.code", "must be 1..64 characters: start with a-z or 0-9, then only "
                                               "a-z, 0-9, '_', '.', '-'")
    kind = enum_field(FeatureKind, f.kind, f"{field}.kind")
    if kind is not FeatureKind.STATIC:
        _empty(f.value, f"{field}.value", kind)
    if kind is not FeatureKind.METERED:
        for name in ("metric_code", "limit", "limit_mode"):
            _empty(getattr(f, name), f"{field}.{name}", kind)
        if kind is FeatureKind.BOOLEAN:
            return Feature(code, kind)
        value = text_field(f.value, f"{field}.value")
        if value.strip() == "":
            raise ValidationError(f"{field}.value", "is required for kind 'static'")
        if len(value) > VALUE_MAX_LEN:
            raise ValidationError(f"{field}.value", f"must be at most {VALUE_MAX_LEN} characters")
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise ValidationError(f"{field}.value", "must not contain control characters")
        return Feature(code, kind, value=value)
    metric = text_field(f.metric_code, f"{field}.metric_code")
    if metric == "":
        raise ValidationError(f"{field}.metric_code", "is required for kind 'metered'")
    if metric not in metrics:
        raise ValidationError(f"{field}.metric_code", f"must be the metric_code of one of the plan's usage "
                                                      f"charges, got {metric!r}")
    limit_text = text_field(f.limit, f"{field}.limit")
    if limit_text == "":
        raise ValidationError(f"{field}.limit", "is required for kind 'metered'")
    limit = parse_decimal(limit_text, f"{field}.limit", max_scale=LIMIT_MAX_SCALE)
    mode_text = text_field(f.limit_mode, f"{field}.limit_mode") or LimitMode.HARD.value
    try:
        mode = LimitMode(mode_text)
    except ValueError:
        raise ValidationError(f"{field}.limit_mode", f"must be one of hard, soft, got {mode_text!r}") from None
    return Feature(code, kind, metric_code=metric, limit=limit, limit_mode=mode)


def parse_features(given: Sequence[FeatureInput], metrics: Collection[str], v: Violations) -> list[Feature]:
    """The plan's features, each reporting its first violation into ``v``; ``metrics``: the
    metric codes of the plan's (valid) usage charges, the only ones a metered feature may name."""
    if isinstance(given, (str, bytes)):
        raise ValidationError("features", "must be a list of features")
    items: tuple[object, ...] = tuple(given or ())
    if len(items) > MAX_FEATURES:
        raise ValidationError("features", f"must have at most {MAX_FEATURES} entries")
    out: list[Feature] = []
    seen: dict[str, int] = {}
    for i, f in enumerate(items):
        feature = v.check(_parse_feature, f, f"features[{i}]", metrics)
        if feature is None:
            continue
        first = seen.get(feature.code)
        if first is not None:
            v.items.append((f"features[{i}].code", f"duplicates features[{first}].code '{feature.code}'"))
            continue
        seen[feature.code] = i
        out.append(feature)
    return out


# ----------------------------------------------------------------------- usage


def counting_charge(spec: PlanSpec, feature: Feature) -> UsageCharge | None:
    """The usage charge whose aggregation a metered feature's ``used`` follows: the plan's
    charge of the feature's metric (one at most: metric codes are unique in a plan; None:
    none, which validation refuses)."""
    for charge in spec.usage_charges:
        if charge.metric_code == feature.metric_code:
            return charge
    return None


@dataclass(frozen=True)
class EventCounts:
    """What a counting charge's quantity needs read from the events rather than the stored
    totals: a unique count's property, or a weighted_sum's history (the level and changes)."""

    unique_property: str | None = None
    gauge: bool = False


_NO_EVENTS = EventCounts()


def event_counts(charge: UsageCharge) -> EventCounts:
    """Only unique_count and weighted_sum quantities come from the events: a dynamic or
    per-event price reads its events for the amount, never for the quantity."""
    from billing.domain.plans import Aggregation

    if charge.aggregation is Aggregation.UNIQUE_COUNT and charge.unique_property:
        return EventCounts(unique_property=charge.unique_property)
    if charge.aggregation is Aggregation.WEIGHTED_SUM:
        return EventCounts(gauge=True)
    return _NO_EVENTS


def metered_used(spec: PlanSpec, feature: Feature, usage: Mapping[str, PeriodUsage], period_start: datetime,
                 period_end: datetime | None) -> Decimal | None:
    """A metered feature's ``used``: its counting charge's quantity (``charge_quantity``, a
    weighted_sum over the whole period as the close prices it) of the period's ``usage`` by
    metric. None: the plan has no charge of the metric (``decide`` counts it as 0)."""
    from billing.domain.aggregation import PeriodUsage, charge_quantity, over_period
    from billing.domain.periods import to_us

    charge = counting_charge(spec, feature)
    if charge is None:
        return None
    metric_usage = usage.get(charge.metric_code) or PeriodUsage()
    if period_end is not None:
        metric_usage = over_period(metric_usage, to_us(period_start), to_us(period_end))
    return charge_quantity(charge, metric_usage)


# ----------------------------------------------------------------------- decision

_STATUS_REASON = {
    SubscriptionStatus.PENDING: Reason.SUBSCRIPTION_PENDING,
    SubscriptionStatus.PAUSED: Reason.SUBSCRIPTION_PAUSED,
    SubscriptionStatus.CANCELED: Reason.SUBSCRIPTION_CANCELED,
}


def decide(feature: Feature | None, status: SubscriptionStatus | str, used: Decimal | None) -> Decision:
    """Whether a subscription in ``status`` may use ``feature`` (None: its plan does not list
    it) now, given the current period's ``used`` quantity of a metered feature's metric (None
    counts as 0). The subscription's status is judged first: a paused one is denied even a
    feature its plan lists."""
    st = SubscriptionStatus(status)
    if st not in ENTITLED_STATUSES:
        return Decision(False, _STATUS_REASON[st])
    if feature is None:
        return Decision(False, Reason.FEATURE_NOT_IN_PLAN)
    if feature.kind is FeatureKind.BOOLEAN:
        return Decision(True, Reason.ENTITLED)
    if feature.kind is FeatureKind.STATIC:
        return Decision(True, Reason.ENTITLED, value=feature.value)
    assert feature.limit is not None
    quantity = used if used is not None else Decimal(0)
    remaining = max(feature.limit - quantity, Decimal(0))
    reached = quantity >= feature.limit
    if not reached:
        return Decision(True, Reason.ENTITLED, used=quantity, limit=feature.limit, remaining=remaining)
    if feature.limit_mode is LimitMode.SOFT:
        return Decision(True, Reason.OVER_SOFT_LIMIT, used=quantity, limit=feature.limit, remaining=remaining,
                        over_limit=True)
    return Decision(False, Reason.LIMIT_REACHED, used=quantity, limit=feature.limit, remaining=remaining,
                    over_limit=True)


def entitled_to(status: SubscriptionStatus | str, features: tuple[Feature, ...]) -> tuple[Feature, ...]:
    """What a subscription in ``status`` on a plan with ``features`` may use: the features
    while active or trialing, else nothing."""
    return features if SubscriptionStatus(status) in ENTITLED_STATUSES else ()


#: A subscription as far as its entitlements go: (status, plan id, the plan's features).
State = tuple[SubscriptionStatus | str, object, tuple[Feature, ...]]


def change_data(before: State | None, after: State, cause_event: str) -> dict[str, str] | None:
    """The ``data`` of an ``entitlements.changed`` event for a change from ``before`` to
    ``after`` (``before`` None: a new subscription), or None when both states entitle the
    subscription to the same features (a plan without features, two plans with the same
    features, a trial ending on the same plan, a change while paused)."""
    old = entitled_to(before[0], before[2]) if before else ()
    new = entitled_to(after[0], after[2])
    if old == new:
        return None
    entitled = SubscriptionStatus(after[0]) in ENTITLED_STATUSES
    data = {"cause_event": str(cause_event), "entitled": "true" if entitled else "false", "plan_id": str(after[1])}
    if before is not None and before[1] != after[1]:
        data["old_plan_id"] = str(before[1])
    return data

"""Usage thresholds (docs/alerts.md): which stored total a threshold watches, and when it
is crossed. Pure."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from decimal import Context, Decimal

from billing.domain.entitlements import FeatureKind
from billing.domain.errors import ValidationError
from billing.domain.plans import Aggregation, PlanSpec

__all__ = ["ONCE_KEY", "MEASURES", "AMOUNT", "MAX_PERCENT", "alert_id", "crossed", "crossing_key", "measure_of",
           "parse_value", "parse_measure", "parse_percent", "share_of", "metered_limit", "choose_value"]

# The usage_totals column a charge's aggregation is priced from. unique_count and
# weighted_sum are read from the events at the period's close, not kept as a running
# total, so a threshold on them could not be checked per batch: refused at creation.
MEASURES: dict[Aggregation, str] = {
    Aggregation.SUM: "quantity_sum",
    Aggregation.COUNT: "event_count",
    Aggregation.MAX: "quantity_max",
    Aggregation.LATEST: "latest_quantity",
}
# A one-off threshold's crossing is keyed on this instead of its period: it fires once ever.
ONCE_KEY = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ALERT_NS = uuid.UUID("5b1f4a9e-2d4c-4f0e-9a57-6c1d2e3f4a5b")


def measure_of(aggregation: Aggregation) -> str | None:
    """The total a threshold on a charge of this aggregation watches; None: not supported."""
    return MEASURES.get(aggregation)


def crossed(total: Decimal | None, value: Decimal) -> bool:
    """A threshold is crossed when the period's total reaches it (>=); no usage never does."""
    return total is not None and total >= value


def crossing_key(recurring: bool, period_start: datetime) -> datetime:
    """What a crossing is recorded under: its period, or ONCE_KEY for a one-off threshold."""
    return period_start if recurring else ONCE_KEY


def alert_id(threshold_id: uuid.UUID, key: datetime, subscription_id: uuid.UUID | None = None) -> uuid.UUID:
    """The same crossing always has the same id (a consumer may deduplicate on it). A plan's
    threshold crosses per subscription: its `subscription_id` is part of the id."""
    if subscription_id is not None:
        return uuid.uuid5(_ALERT_NS, f"{threshold_id}/{subscription_id}/{key.isoformat()}")
    return uuid.uuid5(_ALERT_NS, f"{threshold_id}/{key.isoformat()}")


_VALUE = re.compile(r"\d{1,15}(?:\.\d{1,12})?", re.ASCII)


def parse_value(text: str) -> Decimal:
    """A threshold's value: a non-negative exact decimal (as a usage quantity)."""
    if not text:
        raise ValidationError("value", "is required: a decimal >= 0")
    if text.startswith("-"):
        raise ValidationError("value", f"must not be negative, got {text[:40]!r}")
    if not _VALUE.fullmatch(text):
        raise ValidationError("value", f"must be a decimal >= 0 with up to 15 digits before the point and 12 "
                                       f"after, got {text[:40]!r}")
    return Decimal(text)


#: The measure of an amount threshold (usage_thresholds.measure): the period's running amount.
AMOUNT = "amount"
#: A share of a limit may go above it (e.g. 120% of a soft limit), up to ten times.
MAX_PERCENT = Decimal(1000)
_PERCENT = re.compile(r"\d{1,4}(?:\.\d{1,4})?", re.ASCII)
_EXACT = Context(prec=100)


def parse_measure(text: str) -> str:
    """"quantity" (the default, "") or "amount"."""
    if text in ("", "quantity"):
        return "quantity"
    if text == AMOUNT:
        return AMOUNT
    raise ValidationError("measure", f"must be quantity or amount, got {text[:40]!r}")


def parse_percent(text: str) -> Decimal:
    """A share of a limit, in percent: > 0 and <= 1000, up to 4 decimals."""
    if not _PERCENT.fullmatch(text) or not 0 < Decimal(text) <= MAX_PERCENT:
        raise ValidationError("percent", f"must be a decimal > 0 and <= {MAX_PERCENT} with up to 4 decimals, "
                                         f"got {text[:40]!r}")
    return Decimal(text)


def choose_value(value: str, percent: str) -> tuple[Decimal | None, Decimal | None]:
    """(absolute value, percent): exactly one of the two is given."""
    if value and percent:
        raise ValidationError("percent", "give either value or percent, not both")
    if percent:
        return None, parse_percent(percent)
    return parse_value(value), None


def metered_limit(plan: PlanSpec, metric_code: str) -> Decimal | None:
    """The limit of the plan's first metered entitlement on the metric (None: there is none)."""
    return next((f.limit for f in plan.features if f.kind is FeatureKind.METERED and f.metric_code == metric_code
                 and f.limit is not None), None)


def share_of(plan: PlanSpec, measure: str, metric_code: str, percent: Decimal) -> Decimal:
    """The absolute value of a share of a limit: of the metric's metered entitlement limit
    for a quantity threshold, of the plan's minimum commitment for an amount threshold
    (docs/alerts.md); exact. ValidationError on `percent` when the plan has no such limit."""
    if measure == AMOUNT:
        limit: Decimal | None = plan.minimum_commitment or None
        if limit is None:
            raise ValidationError("percent", "an amount threshold's share is of the plan's minimum_commitment, "
                                             "which the subscription's plan does not have")
    else:
        limit = metered_limit(plan, metric_code)
        if limit is None:
            raise ValidationError("percent", f"a quantity threshold's share is of the metered entitlement's limit on "
                                             f"{metric_code[:64]!r}, which the subscription's plan does not have")
    return _EXACT.divide(_EXACT.multiply(limit, percent), Decimal(100))

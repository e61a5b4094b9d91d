"""Usage thresholds (docs/alerts.md): which stored total a threshold watches, and when it
is crossed. Pure."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from billing.domain.errors import ValidationError
from billing.domain.plans import Aggregation

__all__ = ["ONCE_KEY", "MEASURES", "alert_id", "crossed", "crossing_key", "measure_of", "parse_value"]

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


def alert_id(threshold_id: uuid.UUID, key: datetime) -> uuid.UUID:
    """The same crossing always has the same id (a consumer may deduplicate on it)."""
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

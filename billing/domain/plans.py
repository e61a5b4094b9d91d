"""Plans as values: the input a caller gives, the validated immutable ``PlanSpec``, the
limits of a plan, and the comparison of two plans (upgrade or downgrade).

Validation lives in ``plan_validation`` (``parse_plan``), the stored JSON form in
``plan_storage``."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Mapping, Sequence


__all__ = [
    "IntervalUnit",
    "BillingTiming",
    "Aggregation",
    "PricingModel",
    "TierInput",
    "UsageChargeInput",
    "PlanInput",
    "Tier",
    "UsageCharge",
    "PlanSpec",
    "NOMINAL_SECONDS",
    "MAX_INTERVAL_COUNT",
    "nominal_period_seconds",
    "base_fee_per_second",
    "is_upgrade",
]


class IntervalUnit(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


class BillingTiming(StrEnum):
    IN_ADVANCE = "in_advance"
    IN_ARREARS = "in_arrears"


class Aggregation(StrEnum):
    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"


class PricingModel(StrEnum):
    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class TierInput:
    up_to: str
    unit_price: str
    flat_fee: str = ""


@dataclass(frozen=True)
class UsageChargeInput:
    metric_code: str
    aggregation: str
    pricing_model: str
    unit_price: str = ""
    package_size: str = ""
    tiers: Sequence[TierInput] = ()
    unique_property: str = ""
    max_amount: str = ""  # "": no cap


@dataclass(frozen=True)
class PlanInput:
    code: str
    name: str
    currency: str
    interval: str
    interval_count: int
    base_fee: str
    billing_timing: str
    trial_days: int
    usage_charges: Sequence[UsageChargeInput] = ()
    description: str = ""
    minimum_commitment: str = ""  # "": none


# ----------------------------------------------------------------------- validated


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # None: unbounded (only the last tier)
    unit_price: Decimal
    flat_fee: Decimal


@dataclass(frozen=True)
class UsageCharge:
    metric_code: str
    aggregation: Aggregation
    pricing_model: PricingModel
    unit_price: Decimal | None  # per_unit: per unit; package: per package; tiered: None
    package_size: Decimal | None  # package only
    tiers: tuple[Tier, ...]  # graduated / volume only
    unique_property: str | None = None  # unique_count only: the event property counted
    max_amount: Decimal | None = None  # the most this charge costs in one period (None: no cap)


@dataclass(frozen=True)
class PlanSpec:
    code: str
    name: str
    description: str
    currency: str
    interval: IntervalUnit
    interval_count: int
    base_fee: Decimal
    billing_timing: BillingTiming
    trial_days: int
    usage_charges: tuple[UsageCharge, ...]
    minimum_commitment: Decimal = Decimal(0)  # per period, prorated for a partial one (0: none)


# ----------------------------------------------------------------------- limits

CODE_MAX_LEN = 64
NAME_MAX_LEN = 200
DESCRIPTION_MAX_LEN = 2000
MAX_TRIAL_DAYS = 730
MAX_USAGE_CHARGES = 50
MAX_TIERS = 50
PRICE_MAX_SCALE = 12

MAX_INTERVAL_COUNT: Mapping[IntervalUnit, int] = {
    IntervalUnit.DAY: 366,
    IntervalUnit.WEEK: 52,
    IntervalUnit.MONTH: 24,
    IntervalUnit.YEAR: 10,
}

# ----------------------------------------------------------------------- upgrades

#: Nominal length of one interval unit in seconds, used ONLY to compare prices of
#: plans with different intervals (never to compute periods: see ``periods``).
#: Month and year are Gregorian averages: a year is 365.2425 days = 31,556,952 s,
#: a month one twelfth of that = 30.436875 days = 2,629,746 s.
NOMINAL_SECONDS: Mapping[IntervalUnit, int] = {
    IntervalUnit.DAY: 86_400,
    IntervalUnit.WEEK: 604_800,
    IntervalUnit.MONTH: 2_629_746,
    IntervalUnit.YEAR: 31_556_952,
}


def nominal_period_seconds(spec: PlanSpec) -> int:
    """Nominal length of one billing period of ``spec`` in seconds."""
    return NOMINAL_SECONDS[spec.interval] * spec.interval_count


def base_fee_per_second(spec: PlanSpec) -> Fraction:
    """Base fee divided by the nominal period length, exactly (a ``Fraction``)."""
    return Fraction(spec.base_fee) / nominal_period_seconds(spec)


def is_upgrade(old: PlanSpec, new: PlanSpec) -> bool:
    """True if moving from ``old`` to ``new`` is an upgrade.

    An upgrade is a strictly higher base fee per nominal second
    (``base_fee_per_second``), so $10/month -> $100/year is a downgrade
    (100/31,556,952 < 10/2,629,746) and $10/month -> $3/week an upgrade. Equal
    rates are not an upgrade (they follow the downgrade default: at period end).
    Usage charges are not compared - their cost depends on future usage. Plans in
    different currencies cannot be compared: ``ValueError``.
    """
    if old.currency != new.currency:
        raise ValueError(
            f"cannot compare plans in different currencies ({old.currency} vs {new.currency})"
        )
    return base_fee_per_second(new) > base_fee_per_second(old)

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

from billing.domain.entitlements import Feature, FeatureInput


__all__ = [
    "IntervalUnit",
    "BillingTiming",
    "Aggregation",
    "PricingModel",
    "PackageRounding",
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
    WEIGHTED_SUM = "weighted_sum"  # time-weighted level over the period (seats, gauges)


class PricingModel(StrEnum):
    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"
    PERCENTAGE = "percentage"  # a rate of the amounts events carry (their quantity), plus fees per event
    DYNAMIC = "dynamic"  # each event carries its own price (a property)


class PackageRounding(StrEnum):
    UP = "up"  # every started package is charged (the default)
    DOWN = "down"  # only complete packages are charged


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
    free_units: str = ""
    free_amount: str = ""
    package_rounding: str = ""
    zero_usage_flat_fee: bool = False
    percentage_rate: str = ""
    fixed_fee_per_event: str = ""
    min_fee_per_event: str = ""
    max_fee_per_event: str = ""
    amount_property: str = ""
    corrections: bool = False


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
    features: Sequence[FeatureInput] = ()  # entitlements (domain/entitlements.py)


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
    # The options below have defaults that price exactly as a charge without them did, so a
    # plan stored before them reads back unchanged (docs/pricing.md).
    free_units: Decimal | None = None  # units deducted from the quantity before the model prices it
    free_amount: Decimal | None = None  # money deducted from the charge's lines (never below zero)
    package_rounding: PackageRounding = PackageRounding.UP
    zero_usage_flat_fee: bool = False  # tiered: charge tier 1's flat fee at zero usage
    percentage_rate: Decimal | None = None  # percentage: in percent, "1.5" = 1.5 %
    fixed_fee_per_event: Decimal | None = None  # percentage: added per event
    min_fee_per_event: Decimal | None = None  # percentage: an event's fee is at least this
    max_fee_per_event: Decimal | None = None  # percentage: and at most this
    amount_property: str | None = None  # dynamic: the event property holding the event's price
    corrections: bool = False  # sum: events may carry negative quantities (corrections)

    @property
    def takes_negative(self) -> bool:
        """Whether ingestion accepts a negative quantity for this charge's metric: a
        correction of a sum that allows them, or a change of a weighted_sum's level."""
        return self.corrections or self.aggregation is Aggregation.WEIGHTED_SUM

    @property
    def per_event(self) -> bool:
        """Whether the charge needs each event's fee (a per-event minimum or maximum), not
        only the period's totals."""
        return self.min_fee_per_event is not None or self.max_fee_per_event is not None


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
    features: tuple[Feature, ...] = ()  # what a subscription is entitled to (domain/entitlements.py)


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

"""Plans: raw input -> validated, immutable ``PlanSpec``; JSON form; upgrade comparison.

Validation rules (each failure raises ``ValidationError`` naming the exact field,
e.g. ``usage_charges[0].tiers[1].up_to``; the first failing field in declaration
order is reported):

* ``code``: 1..64 characters, lowercase ``[a-z0-9][a-z0-9_.-]*``.
* ``name``: 1..200 characters, not blank, no control characters.
* ``description``: at most 2000 characters; no control characters except
  newline, carriage return and tab.
* ``currency``: an active ISO 4217 code (``money.validate_currency``).
* ``interval``: day | week | month | year; ``interval_count``: 1..366 days,
  1..52 weeks, 1..24 months, 1..10 years.
* ``base_fee``: required (``"0"`` for a usage-only plan), >= 0, and - since it
  is an amount of money charged as-is for a full period - with no more decimal
  places than the currency's minor unit (USD "9.99" yes, "9.999" no; JPY "500").
* ``billing_timing``: in_advance | in_arrears. ``trial_days``: 0..730.
* ``usage_charges``: at most 50; ``metric_code`` has the charset of ``code`` and
  is unique within the plan; ``aggregation`` and ``pricing_model`` required.

  - per_unit: ``unit_price`` >= 0 (up to 12 decimals); no ``package_size``, no tiers.
  - package: ``unit_price`` = price per started package, >= 0 (up to 12 decimals);
    ``package_size`` > 0 (up to 12 decimals); no tiers.
  - graduated / volume: 1..50 tiers, no ``unit_price`` / ``package_size``. Every
    tier but the last is bounded (``up_to`` > 0, strictly increasing); the LAST
    tier must be unbounded (``up_to`` = ""), so every quantity has a price.
    Tier ``unit_price`` >= 0 (up to 12 decimals); ``flat_fee`` optional (default 0),
    >= 0 and, being an amount of money, limited to the currency's minor unit.

Unit prices may carry up to 12 decimals (e.g. 0.000125 per API call); results are
only rounded per invoice line, by ``money.round_money``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Any, Literal, Mapping, Sequence, TypeVar, overload

from billing.domain.errors import ValidationError
from billing.domain.money import (
    decimal_to_str,
    minor_units,
    parse_decimal,
    validate_currency,
)

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
    "parse_plan",
    "plan_to_dict",
    "plan_from_dict",
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

_CODE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*", re.ASCII)
_DESCRIPTION_ALLOWED_CONTROLS = frozenset("\n\r\t")


# ----------------------------------------------------------------------- helpers


def _text(value: object, field: str) -> str:
    """Raw text field; ``None`` counts as not given (``""``)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    return value


def _int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, "must be an integer")
    return value


def _check_code(value: object, field: str) -> str:
    text = _text(value, field)
    if text == "":
        raise ValidationError(field, "is required")
    if len(text) > CODE_MAX_LEN:
        raise ValidationError(field, f"must be at most {CODE_MAX_LEN} characters")
    if _CODE_RE.fullmatch(text) is None:
        raise ValidationError(
            field,
            "must be lowercase: start with a-z or 0-9, then only a-z, 0-9, '_', '.', '-'",
        )
    return text


def _bad_char(text: str, allowed: frozenset[str] = frozenset()) -> str | None:
    for ch in text:
        if ch in allowed:
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):  # control chars, lone surrogates
            return ch
    return None


def _check_name(value: object, field: str) -> str:
    text = _text(value, field)
    if text == "":
        raise ValidationError(field, "is required")
    if len(text) > NAME_MAX_LEN:
        raise ValidationError(field, f"must be at most {NAME_MAX_LEN} characters")
    if text.strip() == "":
        raise ValidationError(field, "must not be blank")
    bad = _bad_char(text)
    if bad is not None:
        raise ValidationError(field, f"must not contain control characters (found U+{ord(bad):04X})")
    return text


def _check_description(value: object, field: str) -> str:
    text = _text(value, field)
    if len(text) > DESCRIPTION_MAX_LEN:
        raise ValidationError(field, f"must be at most {DESCRIPTION_MAX_LEN} characters")
    bad = _bad_char(text, _DESCRIPTION_ALLOWED_CONTROLS)
    if bad is not None:
        raise ValidationError(field, f"must not contain control characters (found U+{ord(bad):04X})")
    return text


_E = TypeVar("_E", bound=StrEnum)


def _enum(enum_cls: type[_E], value: object, field: str) -> _E:
    text = _text(value, field)
    if text == "":
        raise ValidationError(field, "is required")
    try:
        return enum_cls(text)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)
        raise ValidationError(field, f"must be one of {allowed}, got {text!r}") from None


def _must_be_empty(value: object, field: str, model: PricingModel) -> None:
    if _text(value, field) != "":
        raise ValidationError(field, f"must be empty for pricing model '{model.value}'")


def _price(value: object, field: str) -> Decimal:
    return parse_decimal(_text(value, field), field, max_scale=PRICE_MAX_SCALE)


def _money(value: object, field: str, currency: str) -> Decimal:
    units = minor_units(currency)
    return parse_decimal(_text(value, field), field, max_scale=units)


# ----------------------------------------------------------------------- parsing


def _parse_tier(
    t: object, field: str, is_last: bool, previous_up_to: Decimal | None, prev_field: str, currency: str
) -> Tier:
    if not isinstance(t, TierInput):
        raise ValidationError(field, "must be a tier")
    up_to_text = _text(t.up_to, f"{field}.up_to")
    if is_last:
        if up_to_text != "":
            raise ValidationError(
                f"{field}.up_to", "must be empty: the last tier is unbounded so every quantity has a price"
            )
        up_to = None
    else:
        if up_to_text == "":
            raise ValidationError(f"{field}.up_to", "is required: only the last tier may be unbounded")
        up_to = parse_decimal(up_to_text, f"{field}.up_to", allow_zero=False, max_scale=PRICE_MAX_SCALE)
        if previous_up_to is not None and up_to <= previous_up_to:
            raise ValidationError(
                f"{field}.up_to",
                f"must be greater than {prev_field}.up_to ({decimal_to_str(previous_up_to)})",
            )
    unit_price = _price(t.unit_price, f"{field}.unit_price")
    flat_text = _text(t.flat_fee, f"{field}.flat_fee")
    flat_fee = Decimal(0) if flat_text == "" else _money(flat_text, f"{field}.flat_fee", currency)
    return Tier(up_to=up_to, unit_price=unit_price, flat_fee=flat_fee)


def _parse_charge(c: object, field: str, currency: str) -> UsageCharge:
    if not isinstance(c, UsageChargeInput):
        raise ValidationError(field, "must be a usage charge")
    metric_code = _check_code(c.metric_code, f"{field}.metric_code")
    aggregation = _enum(Aggregation, c.aggregation, f"{field}.aggregation")
    model = _enum(PricingModel, c.pricing_model, f"{field}.pricing_model")
    tiers_in = tuple(c.tiers or ())
    unit_price: Decimal | None = None
    package_size: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    if model in (PricingModel.PER_UNIT, PricingModel.PACKAGE):
        unit_price = _price(c.unit_price, f"{field}.unit_price")
        if model is PricingModel.PACKAGE:
            package_size = parse_decimal(
                _text(c.package_size, f"{field}.package_size"),
                f"{field}.package_size",
                allow_zero=False,
                max_scale=PRICE_MAX_SCALE,
            )
        else:
            _must_be_empty(c.package_size, f"{field}.package_size", model)
        if tiers_in:
            raise ValidationError(f"{field}.tiers", f"must be empty for pricing model '{model.value}'")
    else:
        _must_be_empty(c.unit_price, f"{field}.unit_price", model)
        _must_be_empty(c.package_size, f"{field}.package_size", model)
        if not tiers_in:
            raise ValidationError(
                f"{field}.tiers", f"must have at least 1 tier for pricing model '{model.value}'"
            )
        if len(tiers_in) > MAX_TIERS:
            raise ValidationError(f"{field}.tiers", f"must have at most {MAX_TIERS} tiers")
        parsed: list[Tier] = []
        previous: Decimal | None = None
        for j, t in enumerate(tiers_in):
            tier = _parse_tier(
                t,
                f"{field}.tiers[{j}]",
                is_last=(j == len(tiers_in) - 1),
                previous_up_to=previous,
                prev_field=f"{field}.tiers[{j - 1}]",
                currency=currency,
            )
            parsed.append(tier)
            previous = tier.up_to
        tiers = tuple(parsed)
    unique_text = _text(c.unique_property, f"{field}.unique_property")
    if aggregation is Aggregation.UNIQUE_COUNT:
        if not unique_text:
            raise ValidationError(f"{field}.unique_property", "is required for aggregation 'unique_count'")
        unique_property: str | None = _check_property_name(unique_text, f"{field}.unique_property")
    elif unique_text:
        raise ValidationError(f"{field}.unique_property", "is only for aggregation 'unique_count'")
    else:
        unique_property = None
    return UsageCharge(
        metric_code=metric_code,
        aggregation=aggregation,
        pricing_model=model,
        unit_price=unit_price,
        package_size=package_size,
        tiers=tiers,
        unique_property=unique_property,
    )


_PROPERTY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", re.ASCII)


def _check_property_name(value: str, field: str) -> str:
    if not _PROPERTY_RE.fullmatch(value):
        raise ValidationError(field, "must be 1..64 characters of [A-Za-z0-9_.-], starting with a letter or '_'")
    return value


def parse_plan(inp: PlanInput) -> PlanSpec:
    """Validate raw plan input; return an immutable ``PlanSpec`` or raise ``ValidationError``."""
    code = _check_code(inp.code, "code")
    name = _check_name(inp.name, "name")
    description = _check_description(inp.description, "description")
    currency = validate_currency(_text(inp.currency, "currency"), "currency")
    interval = _enum(IntervalUnit, inp.interval, "interval")
    interval_count = _int(inp.interval_count, "interval_count")
    limit = MAX_INTERVAL_COUNT[interval]
    if not 1 <= interval_count <= limit:
        raise ValidationError(
            "interval_count", f"must be between 1 and {limit} for interval '{interval.value}'"
        )
    base_fee_text = _text(inp.base_fee, "base_fee")
    if base_fee_text == "":
        raise ValidationError("base_fee", "is required (use 0 for a plan without a base fee)")
    base_fee = _money(base_fee_text, "base_fee", currency)
    billing_timing = _enum(BillingTiming, inp.billing_timing, "billing_timing")
    trial_days = _int(inp.trial_days, "trial_days")
    if not 0 <= trial_days <= MAX_TRIAL_DAYS:
        raise ValidationError("trial_days", f"must be between 0 and {MAX_TRIAL_DAYS}")

    charges_in = inp.usage_charges or ()
    if isinstance(charges_in, (str, bytes)):
        raise ValidationError("usage_charges", "must be a list of usage charges")
    charges_in = tuple(charges_in)
    if len(charges_in) > MAX_USAGE_CHARGES:
        raise ValidationError("usage_charges", f"must have at most {MAX_USAGE_CHARGES} entries")
    charges: list[UsageCharge] = []
    seen: dict[str, int] = {}
    for i, c in enumerate(charges_in):
        charge = _parse_charge(c, f"usage_charges[{i}]", currency)
        first = seen.get(charge.metric_code)
        if first is not None:
            raise ValidationError(
                f"usage_charges[{i}].metric_code",
                f"duplicates usage_charges[{first}].metric_code '{charge.metric_code}'",
            )
        seen[charge.metric_code] = i
        charges.append(charge)

    return PlanSpec(
        code=code,
        name=name,
        description=description,
        currency=currency,
        interval=interval,
        interval_count=interval_count,
        base_fee=base_fee,
        billing_timing=billing_timing,
        trial_days=trial_days,
        usage_charges=tuple(charges),
    )


# ----------------------------------------------------------------------- JSON form


def _dec_or_none(value: Decimal | None) -> str | None:
    return None if value is None else decimal_to_str(value)


def plan_to_dict(spec: PlanSpec) -> dict[str, Any]:
    """JSON-safe dict: decimals as plain strings, enums as their values, unbounded up_to as None."""
    return {
        "code": spec.code,
        "name": spec.name,
        "description": spec.description,
        "currency": spec.currency,
        "interval": spec.interval.value,
        "interval_count": spec.interval_count,
        "base_fee": decimal_to_str(spec.base_fee),
        "billing_timing": spec.billing_timing.value,
        "trial_days": spec.trial_days,
        "usage_charges": [
            {
                "metric_code": c.metric_code,
                "aggregation": c.aggregation.value,
                "pricing_model": c.pricing_model.value,
                "unit_price": _dec_or_none(c.unit_price),
                "package_size": _dec_or_none(c.package_size),
                "tiers": [
                    {
                        "up_to": _dec_or_none(t.up_to),
                        "unit_price": decimal_to_str(t.unit_price),
                        "flat_fee": decimal_to_str(t.flat_fee),
                    }
                    for t in c.tiers
                ],
                "unique_property": c.unique_property,
            }
            for c in spec.usage_charges
        ],
    }




def _get(d: object, key: str, path: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValidationError(path or "plan", "must be an object")
    if key not in d:
        raise ValidationError(f"{path}.{key}" if path else key, "is missing")
    return d[key]


def _stored_str(d: object, key: str, path: str) -> str:
    field = f"{path}.{key}" if path else key
    value = _get(d, key, path)
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    return value


def _stored_int(d: object, key: str, path: str) -> int:
    field = f"{path}.{key}" if path else key
    return _int(_get(d, key, path), field)


@overload
def _stored_dec(d: object, key: str, path: str, *, nullable: Literal[False] = False) -> Decimal: ...
@overload
def _stored_dec(d: object, key: str, path: str, *, nullable: Literal[True]) -> Decimal | None: ...


def _stored_dec(d: object, key: str, path: str, *, nullable: bool = False) -> Decimal | None:
    field = f"{path}.{key}" if path else key
    value = _get(d, key, path)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise ValidationError(field, "must be a decimal string" + (" or null" if nullable else ""))
    return parse_decimal(value, field, allow_negative=False, max_scale=28, max_digits_before_point=28)


def _stored_list(d: object, key: str, path: str) -> list[Any]:
    field = f"{path}.{key}" if path else key
    value = _get(d, key, path)
    if not isinstance(value, (list, tuple)):
        raise ValidationError(field, "must be a list")
    return list(value)


def _stored_enum(enum_cls: type[_E], d: object, key: str, path: str) -> _E:
    field = f"{path}.{key}" if path else key
    return _enum(enum_cls, _stored_str(d, key, path), field)


def plan_from_dict(d: Mapping[str, Any]) -> PlanSpec:
    """Inverse of ``plan_to_dict``: ``plan_from_dict(plan_to_dict(s)) == s`` exactly.

    This decodes a STORED plan (already validated by ``parse_plan`` when it was
    created): it checks structure, types, enum values and decimal syntax, raising
    ``ValidationError`` on malformed data, but deliberately does not re-apply the
    business rules of ``parse_plan`` - plans are versioned and never edited, so a
    plan accepted under older rules (or in a since-withdrawn currency) must stay
    readable and billable.
    """
    currency = _stored_str(d, "currency", "")
    try:
        minor_units(currency)
    except ValueError:
        raise ValidationError("currency", f"unknown currency {currency!r}") from None
    charges: list[UsageCharge] = []
    for i, c in enumerate(_stored_list(d, "usage_charges", "")):
        cp = f"usage_charges[{i}]"
        tiers: list[Tier] = []
        for j, t in enumerate(_stored_list(c, "tiers", cp)):
            tp = f"{cp}.tiers[{j}]"
            tiers.append(
                Tier(
                    up_to=_stored_dec(t, "up_to", tp, nullable=True),
                    unit_price=_stored_dec(t, "unit_price", tp),
                    flat_fee=_stored_dec(t, "flat_fee", tp),
                )
            )
        charges.append(
            UsageCharge(
                metric_code=_stored_str(c, "metric_code", cp),
                aggregation=_stored_enum(Aggregation, c, "aggregation", cp),
                pricing_model=_stored_enum(PricingModel, c, "pricing_model", cp),
                unit_price=_stored_dec(c, "unit_price", cp, nullable=True),
                package_size=_stored_dec(c, "package_size", cp, nullable=True),
                tiers=tuple(tiers),
                unique_property=c.get("unique_property") if isinstance(c, Mapping) else None,
            )
        )
    return PlanSpec(
        code=_stored_str(d, "code", ""),
        name=_stored_str(d, "name", ""),
        description=_stored_str(d, "description", ""),
        currency=currency,
        interval=_stored_enum(IntervalUnit, d, "interval", ""),
        interval_count=_stored_int(d, "interval_count", ""),
        base_fee=_stored_dec(d, "base_fee", ""),
        billing_timing=_stored_enum(BillingTiming, d, "billing_timing", ""),
        trial_days=_stored_int(d, "trial_days", ""),
        usage_charges=tuple(charges),
    )


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

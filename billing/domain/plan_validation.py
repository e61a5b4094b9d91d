"""Plan validation: raw input -> validated, immutable ``PlanSpec`` (``parse_plan``).

Validation rules (each failure raises ``ValidationError`` naming the exact field,
e.g. ``usage_charges[0].tiers[1].up_to``; the first failing field in declaration
order is reported):

* ``code``: 1..64 characters, lowercase ``[a-z0-9][a-z0-9_.-]*``.
* ``name``: 1..200 characters, not blank, no control characters.
* ``description``: at most 2000 characters; no control characters except
  newline, carriage return and tab.
* ``currency``: an active ISO 4217 code, or a unit of its own precision like ``credits:4``
  (``money.validate_currency``).
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
  - percentage / dynamic: no ``unit_price``, ``package_size`` or tiers; their options
    and every charge's free units, free amount, package rounding and flat fee at zero
    usage are checked by ``charge_options`` (rules there).
  - graduated / volume: 1..50 tiers, no ``unit_price`` / ``package_size``. Every
    tier but the last is bounded (``up_to`` > 0, strictly increasing); the LAST
    tier must be unbounded (``up_to`` = ""), so every quantity has a price.
    Tier ``unit_price`` >= 0 (up to 12 decimals); ``flat_fee`` optional (default 0),
    >= 0 and, being an amount of money, limited to the currency's minor unit.

* ``minimum_commitment`` (optional, "" = none): an amount of money (the currency's minor
  unit), >= 0, charged at least per period (docs/pricing.md, Commitments and caps).
  ``usage_charges[i].max_amount`` (optional, "" = no cap): an amount of money > 0, the
  most the charge costs in one period.

Unit prices may carry up to 12 decimals (e.g. 0.000125 per API call); results are
only rounded per invoice line, by ``money.round_money``.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from typing import Sequence

from billing.domain.charge_options import charge_options
from billing.domain.entitlements import parse_features
from billing.domain.errors import ValidationError, Violations, enum_field, text_field
from billing.domain.money import decimal_to_str, minor_units, parse_decimal, validate_currency
from billing.domain.plans import (
    CODE_MAX_LEN, DESCRIPTION_MAX_LEN, MAX_INTERVAL_COUNT, MAX_TIERS, MAX_TRIAL_DAYS, MAX_USAGE_CHARGES,
    NAME_MAX_LEN, PRICE_MAX_SCALE, Aggregation, BillingTiming, IntervalUnit, PlanInput, PlanSpec, PricingModel,
    Tier, TierInput, UsageCharge, UsageChargeInput,
)


_CODE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*", re.ASCII)
_DESCRIPTION_ALLOWED_CONTROLS = frozenset("\n\r\t")


# ----------------------------------------------------------------------- helpers


def int_field(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, "must be an integer")
    return value


def _check_code(value: object, field: str) -> str:
    text = text_field(value, field)
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
    text = text_field(value, field)
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
    text = text_field(value, field)
    if len(text) > DESCRIPTION_MAX_LEN:
        raise ValidationError(field, f"must be at most {DESCRIPTION_MAX_LEN} characters")
    bad = _bad_char(text, _DESCRIPTION_ALLOWED_CONTROLS)
    if bad is not None:
        raise ValidationError(field, f"must not contain control characters (found U+{ord(bad):04X})")
    return text


def _must_be_empty(value: object, field: str, model: PricingModel) -> None:
    if text_field(value, field) != "":
        raise ValidationError(field, f"must be empty for pricing model '{model.value}'")


def _price(value: object, field: str) -> Decimal:
    return parse_decimal(text_field(value, field), field, max_scale=PRICE_MAX_SCALE)


def _money(value: object, field: str, currency: str) -> Decimal:
    units = minor_units(currency)
    return parse_decimal(text_field(value, field), field, max_scale=units)


# ----------------------------------------------------------------------- parsing


def _parse_tier(
    t: object, field: str, is_last: bool, previous_up_to: Decimal | None, prev_field: str, currency: str
) -> Tier:
    if not isinstance(t, TierInput):
        raise ValidationError(field, "must be a tier")
    up_to_text = text_field(t.up_to, f"{field}.up_to")
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
    flat_text = text_field(t.flat_fee, f"{field}.flat_fee")
    flat_fee = Decimal(0) if flat_text == "" else _money(flat_text, f"{field}.flat_fee", currency)
    return Tier(up_to=up_to, unit_price=unit_price, flat_fee=flat_fee)


def _parse_charge(c: object, field: str, currency: str) -> UsageCharge:
    if not isinstance(c, UsageChargeInput):
        raise ValidationError(field, "must be a usage charge")
    metric_code = _check_code(c.metric_code, f"{field}.metric_code")
    aggregation = enum_field(Aggregation, c.aggregation, f"{field}.aggregation")
    model = enum_field(PricingModel, c.pricing_model, f"{field}.pricing_model")
    tiers_in = tuple(c.tiers or ())
    unit_price: Decimal | None = None
    package_size: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    if model in (PricingModel.PER_UNIT, PricingModel.PACKAGE):
        unit_price = _price(c.unit_price, f"{field}.unit_price")
        if model is PricingModel.PACKAGE:
            package_size = parse_decimal(
                text_field(c.package_size, f"{field}.package_size"),
                f"{field}.package_size",
                allow_zero=False,
                max_scale=PRICE_MAX_SCALE,
            )
        else:
            _must_be_empty(c.package_size, f"{field}.package_size", model)
        if tiers_in:
            raise ValidationError(f"{field}.tiers", f"must be empty for pricing model '{model.value}'")
    elif model in (PricingModel.PERCENTAGE, PricingModel.DYNAMIC):
        _must_be_empty(c.unit_price, f"{field}.unit_price", model)
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
    unique_text = text_field(c.unique_property, f"{field}.unique_property")
    if aggregation is Aggregation.UNIQUE_COUNT:
        if not unique_text:
            raise ValidationError(f"{field}.unique_property", "is required for aggregation 'unique_count'")
        unique_property: str | None = _check_property_name(unique_text, f"{field}.unique_property")
    elif unique_text:
        raise ValidationError(f"{field}.unique_property", "is only for aggregation 'unique_count'")
    else:
        unique_property = None
    max_text = text_field(getattr(c, "max_amount", ""), f"{field}.max_amount")
    max_amount = (None if max_text == "" else
                  parse_decimal(max_text, f"{field}.max_amount", allow_zero=False, max_scale=minor_units(currency)))
    return UsageCharge(
        metric_code=metric_code,
        aggregation=aggregation,
        pricing_model=model,
        unit_price=unit_price,
        package_size=package_size,
        tiers=tiers,
        unique_property=unique_property,
        max_amount=max_amount,
        **charge_options(c, field, model, aggregation, currency),
    )


_PROPERTY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", re.ASCII)


def _check_property_name(value: str, field: str) -> str:
    if not _PROPERTY_RE.fullmatch(value):
        raise ValidationError(field, "must be 1..64 characters of [A-Za-z0-9_.-], starting with a letter or '_'")
    return value


def _check_interval_count(value: object, interval: IntervalUnit | None) -> int:
    count = int_field(value, "interval_count")
    limit = MAX_INTERVAL_COUNT[interval] if interval is not None else max(MAX_INTERVAL_COUNT.values())
    if not 1 <= count <= limit:
        raise ValidationError("interval_count", f"must be between 1 and {limit}"
                              + (f" for interval '{interval.value}'" if interval is not None else ""))
    return count


def _check_base_fee(value: object, currency: str | None) -> Decimal:
    text = text_field(value, "base_fee")
    if text == "":
        raise ValidationError("base_fee", "is required (use 0 for a plan without a base fee)")
    if currency is None:  # the currency is refused too; its minor unit is unknown
        return parse_decimal(text, "base_fee", max_scale=PRICE_MAX_SCALE)
    return _money(text, "base_fee", currency)


def _check_commitment(value: object, currency: str | None) -> Decimal:
    text = text_field(value, "minimum_commitment")
    if text == "":
        return Decimal(0)
    return parse_decimal(text, "minimum_commitment", max_scale=minor_units(currency) if currency else PRICE_MAX_SCALE)


def _check_trial_days(value: object) -> int:
    days = int_field(value, "trial_days")
    if not 0 <= days <= MAX_TRIAL_DAYS:
        raise ValidationError("trial_days", f"must be between 0 and {MAX_TRIAL_DAYS}")
    return days


def _check_charges(given: Sequence[UsageChargeInput], currency: str, v: Violations) -> list[UsageCharge]:
    if isinstance(given, (str, bytes)):
        raise ValidationError("usage_charges", "must be a list of usage charges")
    charges_in: tuple[object, ...] = tuple(given or ())
    if len(charges_in) > MAX_USAGE_CHARGES:
        raise ValidationError("usage_charges", f"must have at most {MAX_USAGE_CHARGES} entries")
    charges: list[UsageCharge] = []
    seen: dict[str, int] = {}
    for i, c in enumerate(charges_in):  # each charge reports its first violation
        charge = v.check(_parse_charge, c, f"usage_charges[{i}]", currency)
        if charge is None:
            continue
        first = seen.get(charge.metric_code)
        if first is not None:
            v.items.append((f"usage_charges[{i}].metric_code",
                            f"duplicates usage_charges[{first}].metric_code '{charge.metric_code}'"))
            continue
        seen[charge.metric_code] = i
        charges.append(charge)
    return charges


def parse_plan(inp: PlanInput) -> PlanSpec:
    """Validate raw plan input; return an immutable ``PlanSpec`` or raise ONE
    ``ValidationError`` carrying every violation found (``violations``)."""
    v = Violations()
    code = v.check(_check_code, inp.code, "code")
    name = v.check(_check_name, inp.name, "name")
    description = v.check(_check_description, inp.description, "description")
    currency = v.check(lambda: validate_currency(text_field(inp.currency, "currency"), "currency"))
    interval = v.check(enum_field, IntervalUnit, inp.interval, "interval")
    interval_count = v.check(_check_interval_count, inp.interval_count, interval)
    base_fee = v.check(_check_base_fee, inp.base_fee, currency)
    billing_timing = v.check(enum_field, BillingTiming, inp.billing_timing, "billing_timing")
    trial_days = v.check(_check_trial_days, inp.trial_days)
    # With the currency refused, the charges are still checked, against the currency of the
    # most minor units (CLF, 4): no amount is refused for a scale the real currency may allow.
    charges = v.check(_check_charges, inp.usage_charges, currency or "CLF", v)
    commitment = v.check(_check_commitment, getattr(inp, "minimum_commitment", ""), currency)
    # A metered feature names one of the charges; the valid ones (a refused charge already
    # has its violation, so its metric is not named again).
    features = v.check(parse_features, getattr(inp, "features", ()),
                       {c.metric_code for c in charges or ()}, v)
    v.raise_if_any()
    assert code is not None and name is not None and description is not None and currency is not None
    assert interval is not None and interval_count is not None and base_fee is not None
    assert billing_timing is not None and trial_days is not None and charges is not None
    assert commitment is not None and features is not None

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
        minimum_commitment=commitment,
        features=tuple(features),
    )


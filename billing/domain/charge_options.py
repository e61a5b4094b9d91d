"""Validation of a usage charge's options beyond its model's prices: free units and amount,
package rounding, the flat fee at zero usage, percentage and dynamic pricing
(``charge_options``, called by ``plan_validation._parse_charge``).

Rules (each failure names its field, e.g. ``usage_charges[0].percentage_rate``):

* ``free_units``: optional, >= 0 (up to 12 decimals); not for dynamic charges, nor for a
  percentage charge with a per-event minimum or maximum (each event is priced alone there).
* ``free_amount``: optional money, >= 0, to the currency's minor unit; any model.
* ``package_rounding``: package only; ``up`` (the default, empty) or ``down``.
* ``zero_usage_flat_fee``: graduated / volume only.
* percentage: aggregation ``sum`` (the events' quantities are the amounts);
  ``percentage_rate`` required, >= 0, in percent (``"1.5"`` = 1.5 %);
  ``fixed_fee_per_event``, ``min_fee_per_event``, ``max_fee_per_event`` optional, >= 0,
  minimum <= maximum. Those four fields are for percentage charges only.
* dynamic: aggregation ``sum`` or ``count`` (the quantity shown); ``amount_property``
  required: the event property holding the event's price (a decimal, checked at ingestion).
* ``weighted_sum``: with per_unit, package, graduated or volume; its events may be negative.
* ``corrections``: aggregation ``sum`` with per_unit, package, graduated or volume: events
  may carry negative quantities; the period's sum is priced, never below zero.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from billing.domain.errors import ValidationError, text_field
from billing.domain.money import decimal_to_str, minor_units, parse_decimal
from billing.domain.plans import PRICE_MAX_SCALE, Aggregation, PackageRounding, PricingModel, UsageChargeInput

__all__ = ["charge_options"]

_PROPERTY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", re.ASCII)
_PERCENTAGE_FIELDS = ("percentage_rate", "fixed_fee_per_event", "min_fee_per_event", "max_fee_per_event")


def _optional(c: UsageChargeInput, name: str, field: str) -> Decimal | None:
    text = text_field(getattr(c, name), f"{field}.{name}")
    return None if text == "" else parse_decimal(text, f"{field}.{name}", max_scale=PRICE_MAX_SCALE)


def _only_for(c: UsageChargeInput, name: str, field: str, model: PricingModel, models: str) -> None:
    value = getattr(c, name)
    if value not in ("", None, False):
        raise ValidationError(f"{field}.{name}", f"is only for pricing model {models}, not '{model.value}'")


def charge_options(c: UsageChargeInput, field: str, model: PricingModel, aggregation: Aggregation,
                   currency: str) -> dict[str, Any]:
    """The ``UsageCharge`` keyword arguments of the options of charge input ``c``."""
    out: dict[str, Any] = {}
    if aggregation is Aggregation.WEIGHTED_SUM and model in (PricingModel.PERCENTAGE, PricingModel.DYNAMIC):
        raise ValidationError(f"{field}.aggregation",
                              f"weighted_sum prices per_unit, package, graduated or volume, not '{model.value}'")
    free_units = _optional(c, "free_units", field)
    free_text = text_field(c.free_amount, f"{field}.free_amount")
    if free_text:
        out["free_amount"] = parse_decimal(free_text, f"{field}.free_amount", max_scale=minor_units(currency))

    rounding = text_field(c.package_rounding, f"{field}.package_rounding")
    if model is PricingModel.PACKAGE:
        if rounding:
            try:
                out["package_rounding"] = PackageRounding(rounding)
            except ValueError:
                raise ValidationError(f"{field}.package_rounding", f"must be up or down, got {rounding!r}") from None
    elif rounding:
        raise ValidationError(f"{field}.package_rounding", f"is only for pricing model package, not '{model.value}'")

    if not isinstance(c.zero_usage_flat_fee, bool):
        raise ValidationError(f"{field}.zero_usage_flat_fee", "must be true or false")
    if c.zero_usage_flat_fee:
        if model not in (PricingModel.GRADUATED, PricingModel.VOLUME):
            raise ValidationError(f"{field}.zero_usage_flat_fee",
                                  f"is only for pricing models graduated and volume, not '{model.value}'")
        out["zero_usage_flat_fee"] = True

    if model is PricingModel.PERCENTAGE:
        out.update(_percentage(c, field, aggregation, free_units))
    else:
        for name in _PERCENTAGE_FIELDS:
            _only_for(c, name, field, model, "percentage")
    if model is PricingModel.DYNAMIC:
        if aggregation not in (Aggregation.SUM, Aggregation.COUNT):
            raise ValidationError(f"{field}.aggregation", "must be sum or count for pricing model 'dynamic'")
        prop = text_field(c.amount_property, f"{field}.amount_property")
        if not prop:
            raise ValidationError(f"{field}.amount_property",
                                  "is required for pricing model 'dynamic': the event property holding its price")
        if not _PROPERTY_RE.fullmatch(prop):
            raise ValidationError(f"{field}.amount_property",
                                  "must be 1..64 characters of [A-Za-z0-9_.-], starting with a letter or '_'")
        out["amount_property"] = prop
        if free_units is not None:
            raise ValidationError(f"{field}.free_units", "is not for pricing model 'dynamic' (use free_amount)")
    else:
        _only_for(c, "amount_property", field, model, "dynamic")
    if free_units is not None:
        out["free_units"] = free_units
    if not isinstance(c.corrections, bool):
        raise ValidationError(f"{field}.corrections", "must be true or false")
    if c.corrections:
        if aggregation is not Aggregation.SUM or model in (PricingModel.PERCENTAGE, PricingModel.DYNAMIC):
            raise ValidationError(f"{field}.corrections", "is only for aggregation sum with pricing model per_unit, "
                                  "package, graduated or volume")
        out["corrections"] = True
    return out


def _percentage(c: UsageChargeInput, field: str, aggregation: Aggregation,
                free_units: Decimal | None) -> dict[str, Any]:
    if aggregation is not Aggregation.SUM:
        raise ValidationError(f"{field}.aggregation",
                              "must be sum for pricing model 'percentage': the events' quantities are the amounts")
    rate = _optional(c, "percentage_rate", field)
    if rate is None:
        raise ValidationError(f"{field}.percentage_rate", "is required for pricing model 'percentage' (in percent)")
    low, high = _optional(c, "min_fee_per_event", field), _optional(c, "max_fee_per_event", field)
    if low is not None and high is not None and low > high:
        raise ValidationError(f"{field}.min_fee_per_event",
                              f"must not be above max_fee_per_event ({decimal_to_str(high)})")
    if free_units is not None and (low is not None or high is not None):
        raise ValidationError(f"{field}.free_units", "is not allowed with a per-event minimum or maximum "
                              "(each event is priced alone); use free_amount")
    return {"percentage_rate": rate, "fixed_fee_per_event": _optional(c, "fixed_fee_per_event", field),
            "min_fee_per_event": low, "max_fee_per_event": high}

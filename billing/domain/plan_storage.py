"""The stored JSON form of a plan (the ``spec`` column): ``plan_to_dict`` and ``plan_from_dict``."""
from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, Mapping, TypeVar, overload

from billing.domain.entitlements import Feature, FeatureKind, LimitMode
from billing.domain.errors import ValidationError, enum_field
from billing.domain.money import decimal_to_str, minor_units, parse_decimal
from billing.domain.plan_validation import int_field
from billing.domain.plans import (
    Aggregation, BillingTiming, IntervalUnit, PackageRounding, PlanSpec, PricingModel, Tier, UsageCharge,
)

_E = TypeVar("_E", bound=StrEnum)




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
                **({"max_amount": _dec_or_none(c.max_amount)} if c.max_amount is not None else {}),
                **_options_to_dict(c),
            }
            for c in spec.usage_charges
        ],
        "minimum_commitment": decimal_to_str(spec.minimum_commitment),
        # Only when set, so a replica that does not know features reads such a plan unchanged.
        **({"features": [_feature_to_dict(f) for f in spec.features]} if spec.features else {}),
    }


def _feature_to_dict(f: Feature) -> dict[str, Any]:
    out: dict[str, Any] = {"code": f.code, "kind": f.kind.value}
    if f.kind is FeatureKind.STATIC:
        out["value"] = f.value
    if f.kind is FeatureKind.METERED:
        out.update(metric_code=f.metric_code, limit=_dec_or_none(f.limit), limit_mode=f.limit_mode.value)
    return out


def _features_from_dict(d: Mapping[str, Any]) -> tuple[Feature, ...]:
    """Absent from plans stored before entitlements existed: no features."""
    if "features" not in d:
        return ()
    out: list[Feature] = []
    for i, f in enumerate(_stored_list(d, "features", "")):
        fp = f"features[{i}]"
        kind = _stored_enum(FeatureKind, f, "kind", fp)
        if kind is FeatureKind.METERED:
            out.append(Feature(_stored_str(f, "code", fp), kind, metric_code=_stored_str(f, "metric_code", fp),
                               limit=_stored_dec(f, "limit", fp),
                               limit_mode=_stored_enum(LimitMode, f, "limit_mode", fp)))
        else:
            value = _stored_str(f, "value", fp) if kind is FeatureKind.STATIC else ""
            out.append(Feature(_stored_str(f, "code", fp), kind, value=value))
    return tuple(out)


_DECIMAL_OPTIONS = ("free_units", "free_amount", "percentage_rate", "fixed_fee_per_event", "min_fee_per_event",
                    "max_fee_per_event")


def _options_to_dict(c: UsageCharge) -> dict[str, Any]:
    """The charge's options that differ from their defaults (a plan using none stores no
    option keys, which a replica that does not know them reads unchanged)."""
    out: dict[str, Any] = {name: decimal_to_str(getattr(c, name)) for name in _DECIMAL_OPTIONS
                           if getattr(c, name) is not None}
    if c.package_rounding is not PackageRounding.UP:
        out["package_rounding"] = c.package_rounding.value
    for flag in ("zero_usage_flat_fee", "corrections"):
        if getattr(c, flag):
            out[flag] = True
    if c.amount_property is not None:
        out["amount_property"] = c.amount_property
    return out


def _options_from_dict(c: object, path: str) -> dict[str, Any]:
    """Inverse of ``_options_to_dict``; a missing option has its default."""
    out: dict[str, Any] = {}
    if not isinstance(c, Mapping):
        return out
    for name in _DECIMAL_OPTIONS:
        if c.get(name) is not None:
            out[name] = _stored_dec(c, name, path)
    if "package_rounding" in c:
        out["package_rounding"] = _stored_enum(PackageRounding, c, "package_rounding", path)
    for name in ("zero_usage_flat_fee", "corrections"):
        if name in c:
            flag = c[name]
            if not isinstance(flag, bool):
                raise ValidationError(f"{path}.{name}", "must be true or false")
            out[name] = flag
    if c.get("amount_property") is not None:
        out["amount_property"] = _stored_str(c, "amount_property", path)
    return out




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
    return int_field(_get(d, key, path), field)


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
    return enum_field(enum_cls, _stored_str(d, key, path), field)


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
                max_amount=_stored_dec(c, "max_amount", cp, nullable=True) if isinstance(c, Mapping) and "max_amount" in c else None,
                **_options_from_dict(c, cp),
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
        # Absent from plans stored before commitments existed: no commitment.
        minimum_commitment=_stored_dec(d, "minimum_commitment", "") if "minimum_commitment" in d else Decimal(0),
        features=_features_from_dict(d),
    )


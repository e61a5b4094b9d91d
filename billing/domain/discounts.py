"""Discount input: what CreateDiscount accepts (``parse_discount``). How a discount is
applied: ``invoice_assembly.discount_lines`` (docs/billing.md, "The order of an invoice").

Rules (every violation reported, each naming its field):

* ``kind``: percentage | fixed_amount.
* ``value``: percentage: > 0 and <= 100, up to 4 decimals ("12.5" is 12.5 %); fixed_amount:
  > 0, an amount of money in the plan's currency (its minor unit), taken per period.
* ``applies_to``: empty (the whole invoice) or at most 50 distinct names, each ``base_fee``
  or a metric code (the charset of plan codes). A name the plan does not charge takes nothing.
* ``periods``: 0 for forever, else 1..1200 period closes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from billing.domain.errors import ValidationError, Violations, enum_field
from billing.domain.invoice_assembly import DiscountKind
from billing.domain.money import minor_units, parse_decimal

__all__ = ["DiscountInput", "ParsedDiscount", "parse_discount", "MAX_TARGETS", "MAX_PERIODS"]

MAX_TARGETS = 50
MAX_PERIODS = 1200
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)


@dataclass(frozen=True)
class DiscountInput:
    kind: str
    value: str
    applies_to: Sequence[str] = ()
    periods: int = 0


@dataclass(frozen=True)
class ParsedDiscount:
    kind: DiscountKind
    value: Decimal
    applies_to: tuple[str, ...]
    periods: int | None  # None: forever


def _value(kind: DiscountKind | None, text: str, currency: str) -> Decimal:
    if kind is DiscountKind.FIXED_AMOUNT:
        return parse_decimal(text, "value", allow_zero=False, max_scale=minor_units(currency))
    value = parse_decimal(text, "value", allow_zero=False, max_scale=4, max_digits_before_point=3)
    if kind is DiscountKind.PERCENTAGE and value > 100:
        raise ValidationError("value", "a percentage must be at most 100")
    return value


def _targets(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    if len(names) > MAX_TARGETS:
        raise ValidationError("applies_to", f"must have at most {MAX_TARGETS} names")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValidationError(f"applies_to[{i}]", "must be 'base_fee' or a metric code "
                                  "(1..64 characters of [a-z0-9_.-], starting with a letter or digit)")
        if name in names[:i]:
            raise ValidationError(f"applies_to[{i}]", f"duplicates {name!r}")
    return names


def _periods(periods: int) -> int | None:
    if isinstance(periods, bool) or not isinstance(periods, int) or not 0 <= periods <= MAX_PERIODS:
        raise ValidationError("periods", f"must be 0 (forever) or 1..{MAX_PERIODS}")
    return periods or None


def parse_discount(inp: DiscountInput, currency: str) -> ParsedDiscount:
    """Validate a discount of a subscription whose plan is in ``currency``."""
    v = Violations()
    kind = v.check(enum_field, DiscountKind, inp.kind, "kind")
    value = v.check(_value, kind, inp.value, currency)
    targets = v.check(_targets, inp.applies_to)
    periods = v.check(_periods, inp.periods)
    v.raise_if_any()
    assert kind is not None and value is not None and targets is not None
    return ParsedDiscount(kind, value, targets, periods)

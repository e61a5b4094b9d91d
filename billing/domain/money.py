"""Exact money: ``decimal.Decimal`` amounts and integer minor units, never binary floats.

The rounding rule
-----------------
There is exactly ONE rounding rule in the billing service:

    **round half to even ("banker's rounding") to the currency's ISO 4217 minor unit,
    once per invoice line.**

``round_money`` is the only place it is implemented. Everything before a line is
rounded (unit prices with up to 12 decimals, tier sums, prorated fractions of a
period) is computed exactly with ``Decimal`` / ``Fraction``; each invoice line is
rounded once with ``round_money``; totals are sums of already rounded lines and so
need no further rounding. Examples: USD 0.125 -> 0.12, USD 0.135 -> 0.14,
JPY 2.5 -> 2, JPY 3.5 -> 4, BHD 1.0005 -> 1.000, USD -0.125 -> -0.12.

Half-even is unbiased: over many lines the rounding errors cancel instead of
drifting upwards as they do with half-up.

Currencies
----------
``MINOR_UNITS`` holds every active ISO 4217 currency (ISO 4217 list one as published
2026-01-01) that has a minor unit. Codes whose minor unit is "N.A." in the
standard (precious metals XAU/XAG/XPD/XPT, the bond-market units XBA..XBD, XDR,
XSU, XUA and the XTS/XXX test/no-currency codes) are not money one can bill in and
are left out. ``validate_currency`` accepts exactly the codes in ``MINOR_UNITS``.

A few recently withdrawn codes (``WITHDRAWN_MINOR_UNITS``, e.g. BGN after Bulgaria
adopted the euro on 2026-01-01) are refused for new plans but still known to
``minor_units`` / ``round_money`` / ``format_money`` so that plans and invoices
stored before the withdrawal can still be read and billed.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Mapping

from billing.domain.errors import ValidationError

__all__ = [
    "MINOR_UNITS",
    "WITHDRAWN_MINOR_UNITS",
    "parse_decimal",
    "validate_currency",
    "minor_units",
    "round_money",
    "to_minor_units",
    "from_minor_units",
    "format_money",
    "decimal_to_str",
]

_TWO = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB "
    "EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES "
    "KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR "
    "MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD "
    "RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP "
    "TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XAD XCD XCG YER ZAR ZMW ZWG"
)
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"


def _table(*groups: tuple[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for codes, units in groups:
        for code in codes.split():
            if code in out:  # pragma: no cover - guards the literal above
                raise AssertionError(f"duplicate currency {code}")
            out[code] = units
    return dict(sorted(out.items()))


#: Active ISO 4217 alphabetic code -> number of minor-unit digits.
MINOR_UNITS: dict[str, int] = _table((_TWO, 2), (_ZERO, 0), (_THREE, 3), (_FOUR, 4))

#: Recently withdrawn codes: not accepted for new plans, still usable for stored data.
WITHDRAWN_MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "ANG": 2,  # replaced by XCG (2025)
        "BGN": 2,  # replaced by EUR (2026-01-01)
        "CUC": 2,  # withdrawn (2021)
        "HRK": 2,  # replaced by EUR (2023-01-01)
        "SLL": 2,  # replaced by SLE
        "ZWL": 2,  # replaced by ZWG (2024)
    }
)

_CURRENCY_SHAPE = re.compile(r"[A-Z]{3}", re.ASCII)
# A unit outside ISO 4217 names its own precision: "credits:4" is the unit "credits" whose
# amounts are rounded to 4 decimal places. The precision travels inside the code (plans,
# invoice requests, every round_money call) so no reader can round it differently.
_CUSTOM_UNIT = re.compile(r"([a-z][a-z0-9_]{0,31}):([0-9]|1[0-2])", re.ASCII)
MAX_CUSTOM_UNIT_DECIMALS = 12
_PLAIN_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_MAX_TEXT_LEN = 100


def parse_decimal(
    text: str,
    field: str,
    *,
    allow_negative: bool = False,
    allow_zero: bool = True,
    max_scale: int = 12,
    max_digits_before_point: int = 15,
) -> Decimal:
    """Parse plain decimal text strictly; raise ``ValidationError(field, ...)`` otherwise.

    Accepted: an optional ``-``, ASCII digits, optionally ``.`` and more digits
    (``"12"``, ``"12.50"``, ``"-3"``, ``"0.001"``). Refused: exponents, NaN/Infinity,
    spaces, underscores, a leading ``+``, ``".5"``/``"5."``, non-ASCII digits.

    ``max_scale`` limits the number of significant decimal places (trailing zeros
    do not count: ``"1.500"`` has scale 1); ``max_digits_before_point`` limits the
    integer part (leading zeros do not count). The returned ``Decimal`` keeps the
    digits as written (``"12.50"`` -> ``Decimal("12.50")``), except that ``-0`` is
    returned as ``0``.
    """
    if not isinstance(text, str):
        raise ValidationError(field, "must be a decimal number given as a string")
    if text == "":
        raise ValidationError(field, "is required")
    if len(text) > _MAX_TEXT_LEN:
        raise ValidationError(field, f"is too long (at most {_MAX_TEXT_LEN} characters)")
    m = _PLAIN_DECIMAL.fullmatch(text)
    if m is None:
        raise ValidationError(
            field, f"must be a plain decimal number like 12 or 12.50, got {text!r}"
        )
    sign, int_part, frac_part = m.group(1), m.group(2), m.group(3) or ""
    value = Decimal(text)
    if value.is_zero():
        value = value.copy_abs()  # "-0" / "-0.00" -> 0 / 0.00
        if not allow_zero:
            raise ValidationError(field, "must be greater than zero")
    elif sign:
        if not allow_negative:
            raise ValidationError(field, "must not be negative")
    significant_int = int_part.lstrip("0")
    if len(significant_int) > max_digits_before_point:
        raise ValidationError(
            field, f"has more than {max_digits_before_point} digits before the decimal point"
        )
    scale = len(frac_part.rstrip("0"))
    if scale > max_scale:
        if max_scale == 0:
            raise ValidationError(field, "must be a whole number (no decimal places)")
        raise ValidationError(field, f"has more than {max_scale} decimal places")
    return value


def validate_currency(code: str, field: str = "currency") -> str:
    """Return ``code`` if it is an active ISO 4217 code in ``MINOR_UNITS``, or a unit of
    its own precision written ``name:decimals`` (e.g. ``credits:4``, decimals 0..12)."""
    if not isinstance(code, str) or code == "":
        raise ValidationError(field, "is required")
    if _CUSTOM_UNIT.fullmatch(code) is not None:
        return code
    if _CURRENCY_SHAPE.fullmatch(code) is None:
        raise ValidationError(
            field, "must be a 3-letter uppercase ISO 4217 code like USD, or a unit with its decimals "
                   f"like credits:4 (lowercase name, 0..{MAX_CUSTOM_UNIT_DECIMALS} decimals), got {code!r}"
        )
    if code not in MINOR_UNITS:
        if code in WITHDRAWN_MINOR_UNITS:
            raise ValidationError(field, f"{code} is no longer an active ISO 4217 currency")
        raise ValidationError(field, f"{code} is not an ISO 4217 currency")
    return code


def minor_units(currency: str) -> int:
    """Number of minor-unit digits of ``currency`` (active or recently withdrawn).

    Raises ``ValueError`` for an unknown code.
    """
    units = MINOR_UNITS.get(currency)
    if units is None:
        units = WITHDRAWN_MINOR_UNITS.get(currency)
    if units is None:
        custom = _CUSTOM_UNIT.fullmatch(currency) if isinstance(currency, str) else None
        if custom is None:
            raise ValueError(f"unknown currency {currency!r}")
        units = int(custom.group(2))
    return units


def _as_decimal(amount: object) -> Decimal:
    if isinstance(amount, bool):
        raise TypeError("money amounts must be Decimal, not bool")
    if isinstance(amount, int):
        return Decimal(amount)
    if not isinstance(amount, Decimal):
        raise TypeError(f"money amounts must be Decimal, not {type(amount).__name__}")
    if not amount.is_finite():
        raise ValueError(f"money amount must be finite, got {amount}")
    return amount


def round_money(amount: Decimal, currency: str) -> Decimal:
    """THE rounding rule: half-even to the currency's minor unit (see module docstring).

    The result has exactly ``minor_units(currency)`` decimal places and is never
    negative zero. Exact for any finite ``Decimal`` (the precision is sized to the
    value, the ambient decimal context is not used).
    """
    value = amount if type(amount) is Decimal and amount.is_finite() else _as_decimal(amount)
    units = minor_units(currency)
    prec = max(28, value.adjusted() + units + 3)
    rounded = value.quantize(_QUANTA[units] if units < len(_QUANTA) else Decimal(1).scaleb(-units),
                             context=_context(prec))
    if rounded.is_zero():
        rounded = rounded.copy_abs()
    return rounded


# Made once, not per line: the quantum of each number of minor units, and the contexts
# (ROUND_HALF_EVEN, nothing trapped but the defaults) by precision. Sharing a context is
# safe: an operation only sets its flags, which nothing here reads.
_QUANTA = tuple(Decimal(1).scaleb(-units) for units in range(5))
_CONTEXTS: dict[int, Context] = {}


def _context(prec: int) -> Context:
    ctx = _CONTEXTS.get(prec)
    if ctx is None:
        ctx = _CONTEXTS[prec] = Context(prec=prec, rounding=ROUND_HALF_EVEN)
    return ctx


def _exact_minor(value: Decimal, units: int) -> int | None:
    frac = Fraction(value) * (10**units)
    if frac.denominator != 1:
        return None
    return int(frac.numerator)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Amount as an integer count of minor units (USD 12.34 -> 1234, JPY 500 -> 500).

    The amount must already be a whole number of minor units (i.e. rounded with
    ``round_money``); otherwise ``ValueError`` - this function never rounds.
    """
    value = _as_decimal(amount)
    units = minor_units(currency)
    minor = _exact_minor(value, units)
    if minor is None:
        raise ValueError(
            f"{value} {currency} is not a whole number of minor units; round it with round_money first"
        )
    return minor


def from_minor_units(minor: int, currency: str) -> Decimal:
    """Inverse of ``to_minor_units``: 1234 USD minor units -> Decimal("12.34")."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError("minor units must be an int")
    units = minor_units(currency)
    return Decimal(minor).scaleb(-units, context=Context(prec=max(28, len(str(abs(minor))) + 2)))


def format_money(amount: Decimal, currency: str) -> str:
    """Plain text with exactly the currency's number of decimals: "10.00", "500", "1.000".

    Like ``to_minor_units`` it never rounds: an amount that is not a whole number
    of minor units raises ``ValueError``. No currency symbol, no grouping.
    """
    minor = to_minor_units(amount, currency)
    units = minor_units(currency)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor))
    if units == 0:
        return sign + digits
    digits = digits.rjust(units + 1, "0")
    return f"{sign}{digits[:-units]}.{digits[-units:]}"


def decimal_to_str(value: Decimal) -> str:
    """Plain (never exponent) text of a ``Decimal``, keeping its digits as they are.

    ``parse_decimal(decimal_to_str(d), ...)`` gives back ``d`` exactly for any ``d``
    that came from ``parse_decimal``.
    """
    if type(value) is Decimal and value.is_finite():
        # str() is plain text unless it would need an exponent, and four times as fast as
        # format(value, "f"), which a run calls ten times per invoice request.
        text = str(value)
        if "E" not in text:
            return text
    elif not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"not a finite Decimal: {value!r}")
    return format(value, "f")

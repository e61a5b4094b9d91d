"""billing.domain.money: strict parsing, ISO 4217 table, the one rounding rule."""

from __future__ import annotations

import pickle
import re
from decimal import Decimal as D

import pytest
from hypothesis import given, strategies as st

from billing.domain.errors import DomainError, ValidationError
from billing.domain.money import (
    MINOR_UNITS,
    WITHDRAWN_MINOR_UNITS,
    decimal_to_str,
    format_money,
    from_minor_units,
    minor_units,
    parse_decimal,
    round_money,
    to_minor_units,
    validate_currency,
)

# --------------------------------------------------------------------- errors


def test_validation_error_shape():
    err = ValidationError("usage_charges[0].tiers[1].up_to", "must be greater than zero")
    assert isinstance(err, DomainError)
    assert err.field == "usage_charges[0].tiers[1].up_to"
    assert err.message == "must be greater than zero"
    assert str(err) == "usage_charges[0].tiers[1].up_to: must be greater than zero"
    again = pickle.loads(pickle.dumps(err))
    assert (again.field, again.message, str(again)) == (err.field, err.message, str(err))


# --------------------------------------------------------------------- table


@pytest.mark.parametrize(
    "code, units",
    [
        ("USD", 2), ("EUR", 2), ("GBP", 2), ("CHF", 2), ("INR", 2), ("XCG", 2), ("ZWG", 2),
        ("SLE", 2), ("VED", 2),
        ("JPY", 0), ("KRW", 0), ("CLP", 0), ("ISK", 0), ("VND", 0), ("XAF", 0), ("XOF", 0),
        ("XPF", 0), ("UGX", 0), ("PYG", 0), ("BIF", 0), ("DJF", 0), ("GNF", 0), ("KMF", 0),
        ("RWF", 0), ("VUV", 0), ("UYI", 0),
        ("BHD", 3), ("KWD", 3), ("JOD", 3), ("OMR", 3), ("TND", 3), ("IQD", 3), ("LYD", 3),
        ("CLF", 4), ("UYW", 4),
    ],
)
def test_minor_units_table(code, units):
    assert MINOR_UNITS[code] == units
    assert minor_units(code) == units


def test_table_shape():
    assert len(MINOR_UNITS) >= 160
    assert all(re.fullmatch(r"[A-Z]{3}", c) for c in MINOR_UNITS)
    assert set(MINOR_UNITS.values()) == {0, 2, 3, 4}
    # codes without a minor unit in ISO 4217 are not billable currencies
    for code in ("XAU", "XAG", "XPT", "XPD", "XDR", "XTS", "XXX", "XBA", "XSU", "XUA"):
        assert code not in MINOR_UNITS
    assert not set(MINOR_UNITS) & set(WITHDRAWN_MINOR_UNITS)


# --------------------------------------------------------------------- parse_decimal


@pytest.mark.parametrize(
    "text, expected",
    [
        ("12", D("12")),
        ("12.50", D("12.50")),
        ("0", D("0")),
        ("0.000000000001", D("0.000000000001")),
        ("007", D("7")),
        ("999999999999999", D("999999999999999")),
        ("1.500000000000000", D("1.5")),  # trailing zeros do not count towards the scale
    ],
)
def test_parse_decimal_accepts(text, expected):
    value = parse_decimal(text, "f")
    assert value == expected
    assert isinstance(value, D)


def test_parse_decimal_keeps_digits_as_written():
    assert str(parse_decimal("12.50", "f")) == "12.50"


@pytest.mark.parametrize(
    "text",
    [
        "1e3", "1E3", "1.5e-2", "NaN", "nan", "sNaN", "Infinity", "inf", "-Infinity",
        " 1", "1 ", "1 000", "1_000", "+1", ".5", "5.", "1.2.3", "--1", "1,5", "0x10",
        "abc", "\u0661\u0662",  # Arabic-Indic digits
        "1\n", "-", ".",
    ],
)
def test_parse_decimal_rejects_non_plain_text(text):
    with pytest.raises(ValidationError) as e:
        parse_decimal(text, "base_fee")
    assert e.value.field == "base_fee"


@pytest.mark.parametrize(
    "text, kwargs, fragment",
    [
        ("", {}, "is required"),
        ("-3", {}, "negative"),
        ("-0.01", {}, "negative"),
        ("0", {"allow_zero": False}, "greater than zero"),
        ("0.000", {"allow_zero": False}, "greater than zero"),
        ("-0", {"allow_zero": False, "allow_negative": True}, "greater than zero"),
        ("1.123", {"max_scale": 2}, "more than 2 decimal places"),
        ("1.5", {"max_scale": 0}, "whole number"),
        ("0.0000000000001", {}, "more than 12 decimal places"),
        ("1234567890123456", {}, "more than 15 digits"),
        ("1234", {"max_digits_before_point": 3}, "more than 3 digits"),
        ("1" * 101, {"max_digits_before_point": 200}, "too long"),
    ],
)
def test_parse_decimal_rules(text, kwargs, fragment):
    with pytest.raises(ValidationError) as e:
        parse_decimal(text, "usage_charges[0].unit_price", **kwargs)
    assert e.value.field == "usage_charges[0].unit_price"
    assert fragment in e.value.message


def test_parse_decimal_negative_allowed():
    assert parse_decimal("-3", "f", allow_negative=True) == D("-3")
    zero = parse_decimal("-0.00", "f", allow_negative=True)
    assert zero == 0 and not zero.is_signed()
    assert not parse_decimal("-0", "f").is_signed()  # "-0" is zero, not a negative number


@pytest.mark.parametrize("value", [None, 12, D("12")])
def test_parse_decimal_requires_text(value):
    with pytest.raises(ValidationError) as e:
        parse_decimal(value, "quantity")
    assert e.value.field == "quantity"


# --------------------------------------------------------------------- currency


@pytest.mark.parametrize("code", ["USD", "JPY", "BHD", "CLF", "XCG"])
def test_validate_currency_ok(code):
    assert validate_currency(code) == code


@pytest.mark.parametrize(
    "code, fragment",
    [
        ("", "is required"),
        ("usd", "uppercase"),
        ("Usd", "uppercase"),
        ("US", "3-letter"),
        ("USDD", "3-letter"),
        (" USD", "3-letter"),
        ("US1", "3-letter"),
        ("ABC", "not an ISO 4217"),
        ("XAU", "not an ISO 4217"),
        ("XXX", "not an ISO 4217"),
        ("BGN", "no longer"),
        ("HRK", "no longer"),
    ],
)
def test_validate_currency_rejects(code, fragment):
    with pytest.raises(ValidationError) as e:
        validate_currency(code, field="plan.currency")
    assert e.value.field == "plan.currency"
    assert fragment in e.value.message


def test_validate_currency_default_field():
    with pytest.raises(ValidationError) as e:
        validate_currency("???")
    assert e.value.field == "currency"


def test_withdrawn_currency_still_rounds():
    assert round_money(D("1.005"), "BGN") == D("1.00")
    with pytest.raises(ValueError):
        minor_units("ABC")


# --------------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    "amount, currency, expected",
    [
        ("0.125", "USD", "0.12"),
        ("0.135", "USD", "0.14"),
        ("0.145", "USD", "0.14"),
        ("0.1250001", "USD", "0.13"),
        ("0.124999", "USD", "0.12"),
        ("-0.125", "USD", "-0.12"),
        ("-0.135", "USD", "-0.14"),
        ("2.675", "USD", "2.68"),  # exact decimal, so the tie goes to the even 8
        ("10", "USD", "10.00"),
        ("2.5", "JPY", "2"),
        ("3.5", "JPY", "4"),
        ("0.5", "JPY", "0"),
        ("1.5", "JPY", "2"),
        ("1.0005", "BHD", "1.000"),
        ("1.0015", "BHD", "1.002"),
        ("1.00051", "BHD", "1.001"),
        ("0.00005", "CLF", "0.0000"),
        ("0.00015", "CLF", "0.0002"),
        ("123456789012345.675", "USD", "123456789012345.68"),
    ],
)
def test_round_money_half_even_by_hand(amount, currency, expected):
    result = round_money(D(amount), currency)
    assert result == D(expected)
    assert str(result) == expected  # exactly the currency's number of decimals


def test_round_money_never_returns_negative_zero():
    result = round_money(D("-0.004"), "USD")
    assert result == 0 and not result.is_signed()
    assert str(result) == "0.00"


def test_round_money_huge_value_is_exact():
    big = D("1" + "0" * 40 + ".005")
    assert round_money(big, "USD") == D("1" + "0" * 40 + ".00")


@pytest.mark.parametrize("bad", [0.1, D("NaN"), D("Infinity"), "1.00", True])
def test_round_money_rejects_non_decimals(bad):
    with pytest.raises((TypeError, ValueError)):
        round_money(bad, "USD")


def test_round_money_unknown_currency():
    with pytest.raises(ValueError):
        round_money(D("1"), "ABC")


_currencies = st.sampled_from(sorted(MINOR_UNITS))
_amounts = st.decimals(
    min_value=D("-1000000000000000"), max_value=D("1000000000000000"),
    allow_nan=False, allow_infinity=False, places=None,
)


@given(amount=_amounts, currency=_currencies)
def test_round_money_properties(amount, currency):
    units = MINOR_UNITS[currency]
    minor = D(1).scaleb(-units)
    result = round_money(amount, currency)
    # within half a minor unit
    assert abs(result - amount) <= minor / 2
    # a whole number of minor units, with exactly `units` decimals
    assert result.as_tuple().exponent == -units
    assert isinstance(to_minor_units(result, currency), int)
    # idempotent
    assert round_money(result, currency) == result
    # a tie goes to the even neighbour
    if abs(result - amount) == minor / 2:
        assert to_minor_units(result, currency) % 2 == 0


@given(amount=st.decimals(min_value=D("0"), max_value=D("1e9"), places=6), currency=_currencies)
def test_round_money_is_symmetric(amount, currency):
    assert round_money(-amount, currency) == -round_money(amount, currency)


# --------------------------------------------------------------------- minor units & formatting


@pytest.mark.parametrize(
    "amount, currency, minor, text",
    [
        ("12.34", "USD", 1234, "12.34"),
        ("10", "USD", 1000, "10.00"),
        ("10.000", "USD", 1000, "10.00"),
        ("0.05", "USD", 5, "0.05"),
        ("-0.05", "USD", -5, "-0.05"),
        ("-12.30", "EUR", -1230, "-12.30"),
        ("500", "JPY", 500, "500"),
        ("1.000", "BHD", 1000, "1.000"),
        ("0.001", "KWD", 1, "0.001"),
        ("1.2345", "CLF", 12345, "1.2345"),
        ("0", "USD", 0, "0.00"),
    ],
)
def test_minor_units_and_format(amount, currency, minor, text):
    assert to_minor_units(D(amount), currency) == minor
    assert format_money(D(amount), currency) == text
    assert from_minor_units(minor, currency) == D(amount)


@pytest.mark.parametrize("amount, currency", [("0.125", "USD"), ("2.5", "JPY"), ("1.0005", "BHD")])
def test_unrounded_amounts_are_refused(amount, currency):
    with pytest.raises(ValueError):
        to_minor_units(D(amount), currency)
    with pytest.raises(ValueError):
        format_money(D(amount), currency)


@given(minor=st.integers(min_value=-(10**20), max_value=10**20), currency=_currencies)
def test_minor_units_round_trip(minor, currency):
    amount = from_minor_units(minor, currency)
    assert to_minor_units(amount, currency) == minor
    text = format_money(amount, currency)
    assert D(text) == amount
    units = MINOR_UNITS[currency]
    assert (len(text.split(".")[1]) if "." in text else 0) == units


@given(
    amount=st.decimals(
        min_value=D("-1e15"), max_value=D("1e15"), places=12, allow_nan=False, allow_infinity=False
    )
)
def test_decimal_to_str_round_trips_through_parse(amount):
    text = decimal_to_str(amount)
    assert "E" not in text and "e" not in text
    back = parse_decimal(text, "f", allow_negative=True, max_digits_before_point=16)
    assert back == amount
    if not amount.is_zero():
        assert back.as_tuple() == amount.as_tuple()


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimal_to_str_is_format_f_for_any_finite_decimal(amount):
    # Any exponent (1E+2, 1E-7, 0E-9, -0): str()'s fast path must never change the text.
    assert decimal_to_str(amount) == format(amount, "f")


@pytest.mark.parametrize("value", [D("NaN"), D("sNaN"), D("Infinity"), D("-Infinity"), 1.5, 2, "3"])
def test_decimal_to_str_refuses_what_is_not_a_finite_decimal(value):
    with pytest.raises(ValueError):
        decimal_to_str(value)

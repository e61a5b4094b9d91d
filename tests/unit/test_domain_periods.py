"""billing.domain.periods: anchored boundaries, month-end clamping, containing period."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from billing.domain.periods import add_interval, boundary_index, period_containing
from billing.domain.plans import MAX_INTERVAL_COUNT, IntervalUnit

UTC = timezone.utc
M, Y, W, D_ = IntervalUnit.MONTH, IntervalUnit.YEAR, IntervalUnit.WEEK, IntervalUnit.DAY


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------- add_interval


def test_month_end_anchor_is_computed_from_the_anchor():
    a = utc(2024, 1, 31, 9, 30)
    got = [add_interval(a, M, 1, n) for n in range(0, 7)]
    assert got == [
        utc(2024, 1, 31, 9, 30),
        utc(2024, 2, 29, 9, 30),  # leap year
        utc(2024, 3, 31, 9, 30),  # back to the 31st: not chained from Feb 29
        utc(2024, 4, 30, 9, 30),
        utc(2024, 5, 31, 9, 30),
        utc(2024, 6, 30, 9, 30),
        utc(2024, 7, 31, 9, 30),
    ]
    assert add_interval(utc(2023, 1, 31), M, 1) == utc(2023, 2, 28)  # common year
    assert add_interval(a, M, 1, -1) == utc(2023, 12, 31, 9, 30)
    assert add_interval(a, M, 1, -2) == utc(2023, 11, 30, 9, 30)


def test_leap_day_yearly_anchor():
    a = utc(2024, 2, 29)
    assert add_interval(a, Y, 1) == utc(2025, 2, 28)
    assert add_interval(a, Y, 1, 2) == utc(2026, 2, 28)
    assert add_interval(a, Y, 1, 4) == utc(2028, 2, 29)
    assert add_interval(a, Y, 1, -1) == utc(2023, 2, 28)
    assert add_interval(a, M, 12, 4) == utc(2028, 2, 29)
    assert add_interval(utc(2000, 2, 29), Y, 100) == utc(2100, 2, 28)  # 2100 is not a leap year
    assert add_interval(utc(2000, 2, 29), Y, 10, 40) == utc(2400, 2, 29)


@pytest.mark.parametrize(
    "anchor, unit, count, n, expected",
    [
        (utc(2024, 1, 15, 12), D_, 1, 1, utc(2024, 1, 16, 12)),
        (utc(2024, 1, 15, 12), D_, 30, 2, utc(2024, 3, 15, 12)),
        (utc(2024, 2, 28), D_, 1, 1, utc(2024, 2, 29)),
        (utc(2024, 1, 1), W, 1, 1, utc(2024, 1, 8)),
        (utc(2024, 1, 1), W, 2, 3, utc(2024, 2, 12)),
        (utc(2024, 1, 1), W, 1, -1, utc(2023, 12, 25)),
        (utc(2024, 1, 31), M, 3, 1, utc(2024, 4, 30)),
        (utc(2024, 1, 31), M, 3, 2, utc(2024, 7, 31)),
        (utc(2024, 11, 30), M, 1, 3, utc(2025, 2, 28)),
        (utc(2024, 8, 31), M, 6, 1, utc(2025, 2, 28)),
        (utc(2024, 1, 1), M, 24, 1, utc(2026, 1, 1)),
        (utc(2024, 5, 17, 23, 59, 59, 999999), Y, 10, 1, utc(2034, 5, 17, 23, 59, 59, 999999)),
        (utc(2024, 3, 10), M, 1, 0, utc(2024, 3, 10)),
    ],
)
def test_add_interval_table(anchor, unit, count, n, expected):
    assert add_interval(anchor, unit, count, n) == expected


def test_add_interval_accepts_string_units_and_other_utc_tzinfos():
    assert add_interval(utc(2024, 1, 31), "month", 1) == utc(2024, 2, 29)
    a = datetime(2024, 1, 31, tzinfo=ZoneInfo("UTC"))
    result = add_interval(a, M, 1)
    assert result == utc(2024, 2, 29) and result.tzinfo is UTC


@pytest.mark.parametrize(
    "anchor",
    [
        datetime(2024, 1, 31),  # naive
        datetime(2024, 1, 31, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 7, 1, tzinfo=ZoneInfo("Europe/Berlin")),
    ],
)
def test_add_interval_refuses_non_utc(anchor):
    with pytest.raises(ValueError):
        add_interval(anchor, M, 1)
    with pytest.raises(ValueError):
        period_containing(utc(2024, 1, 1), M, 1, anchor)


@pytest.mark.parametrize("count", [0, -1])
def test_add_interval_refuses_bad_count(count):
    with pytest.raises(ValueError):
        add_interval(utc(2024, 1, 1), M, count)


def test_add_interval_out_of_range():
    with pytest.raises(ValueError):
        add_interval(utc(9999, 6, 1), Y, 1)
    with pytest.raises(ValueError):
        add_interval(utc(9999, 12, 1), D_, 366, 1)


# --------------------------------------------------------------------- period_containing


def test_boundary_belongs_to_the_period_that_starts_there():
    a = utc(2024, 1, 31)
    assert period_containing(a, M, 1, utc(2024, 2, 29)) == (utc(2024, 2, 29), utc(2024, 3, 31))
    assert period_containing(a, M, 1, utc(2024, 2, 29) - timedelta(microseconds=1)) == (
        utc(2024, 1, 31),
        utc(2024, 2, 29),
    )
    assert period_containing(a, M, 1, a) == (utc(2024, 1, 31), utc(2024, 2, 29))


def test_period_before_the_anchor():
    a = utc(2024, 1, 31)
    assert period_containing(a, M, 1, utc(2023, 12, 1)) == (utc(2023, 11, 30), utc(2023, 12, 31))
    assert period_containing(a, W, 1, utc(2024, 1, 30)) == (utc(2024, 1, 24), utc(2024, 1, 31))
    assert period_containing(a, D_, 1, a - timedelta(microseconds=1)) == (utc(2024, 1, 30), a)


def test_far_away_t_is_fast():
    # ~100k daily periods and ~10k monthly periods away: must be computed, not iterated
    a = utc(2000, 1, 31, 8)
    start, end = period_containing(a, D_, 1, utc(2270, 6, 1, 12))
    assert start == utc(2270, 6, 1, 8) and end == utc(2270, 6, 2, 8)
    start, end = period_containing(a, M, 1, utc(2900, 2, 28, 9))
    assert (start, end) == (utc(2900, 2, 28, 8), utc(2900, 3, 31, 8))
    assert boundary_index(a, M, 1, start) == 900 * 12 + 1
    start, end = period_containing(a, M, 1, utc(1100, 3, 5))
    assert (start, end) == (utc(1100, 2, 28, 8), utc(1100, 3, 31, 8))


_units = st.sampled_from(list(IntervalUnit))
_instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2300, 12, 31), timezones=st.just(UTC)
)


@st.composite
def _anchors(draw):
    if draw(st.booleans()):
        # month ends and leap days are where the interesting cases are
        year = draw(st.integers(1950, 2250))
        month = draw(st.integers(1, 12))
        day = draw(st.sampled_from([28, 29, 30, 31]))
        day = min(day, calendar.monthrange(year, month)[1])
        return utc(year, month, day, draw(st.integers(0, 23)), draw(st.integers(0, 59)))
    return draw(_instants)


@st.composite
def _unit_and_count(draw):
    unit = draw(_units)
    return unit, draw(st.integers(1, MAX_INTERVAL_COUNT[unit]))


@given(anchor=_anchors(), uc=_unit_and_count(), t=_instants)
def test_period_containing_property(anchor, uc, t):
    unit, count = uc
    start, end = period_containing(anchor, unit, count, t)
    assert start <= t < end
    n = boundary_index(anchor, unit, count, t)
    assert add_interval(anchor, unit, count, n) == start
    assert add_interval(anchor, unit, count, n + 1) == end
    # the next period starts where this one ends, and the boundary belongs to it
    assert period_containing(anchor, unit, count, end)[0] == end
    assert period_containing(anchor, unit, count, start) == (start, end)
    assert start.tzinfo is UTC and end.tzinfo is UTC


@given(anchor=_anchors(), uc=_unit_and_count(), n=st.integers(-100, 100))
def test_boundaries_strictly_increase_and_keep_the_anchor_day(anchor, uc, n):
    unit, count = uc
    b0 = add_interval(anchor, unit, count, n)
    b1 = add_interval(anchor, unit, count, n + 1)
    assert b0 < b1
    assert b0.time() == anchor.time()
    if unit in (IntervalUnit.MONTH, IntervalUnit.YEAR):
        # clamped only when the month is too short for the anchor's day
        assert b0.day == anchor.day or (b0.day < anchor.day and (b0 + timedelta(days=1)).day == 1)
    assert boundary_index(anchor, unit, count, b0) == n
    assert boundary_index(anchor, unit, count, b1 - timedelta(microseconds=1)) == n


def test_period_containing_cache_never_serves_inputs_it_must_refuse():
    # The cache hashes equal values together: a cached UTC answer must not be served for
    # count=True, a non-UTC offset or a naive datetime, which are refused as before.
    a = datetime(2026, 1, 31, tzinfo=UTC)
    t = datetime(2026, 3, 5, tzinfo=UTC)
    assert period_containing(a, IntervalUnit.MONTH, 1, t) == period_containing(a, IntervalUnit.MONTH, 1, t)
    with pytest.raises(TypeError):
        period_containing(a, IntervalUnit.MONTH, True, t)
    with pytest.raises(ValueError):
        period_containing(a.astimezone(timezone(timedelta(hours=1))), IntervalUnit.MONTH, 1, t)
    with pytest.raises(ValueError):
        period_containing(a, IntervalUnit.MONTH, 1, t.replace(tzinfo=None))
    # A zero offset that is not timezone.utc is accepted, uncached, with the same answer.
    zero = timezone(timedelta(0), "Z")
    assert period_containing(a.replace(tzinfo=zero), "month", 1, t) == period_containing(a, IntervalUnit.MONTH, 1, t)

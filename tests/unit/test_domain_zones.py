"""Calendar periods in IANA time zones (billing/domain/zones.py, periods.py; docs/time.md).

The rules are those of the pinned `tzdata` package (`zone_info`), as the service uses them.
Exhaustive over 20 zones with DST or odd offsets, every anchor day 1..31 and 10 years of
monthly periods: the periods tile (each ends where the next starts) and each starts at
local midnight of the clamped anchor day, or at the first instant after a midnight gap.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from billing.domain.periods import add_interval, boundary_index, period_containing
from billing.domain.plans import IntervalUnit
from billing.domain.zones import check_zone, local_midnight, zone_info

UTC = timezone.utc
ZONES = [
    "Australia/Lord_Howe", "Asia/Kathmandu", "America/St_Johns", "Europe/Dublin", "America/New_York",
    "Europe/London", "Europe/Berlin", "Australia/Sydney", "Australia/Adelaide", "Pacific/Chatham",
    "Asia/Kolkata", "America/Havana", "America/Santiago", "America/Asuncion", "Asia/Tehran",
    "Africa/Casablanca", "Pacific/Apia", "America/Sao_Paulo", "Asia/Beirut", "Antarctica/Troll",
]
YEARS = range(2020, 2030)
LAST_DAY = {m: (date(2001 + m // 12, m % 12 + 1, 1) - timedelta(days=1)).day for m in range(1, 13)}


def _days_in(year: int, month: int) -> int:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return (nxt - date(year, month, 1)).days


def _is_local_start(instant: datetime, day: date, tz: ZoneInfo) -> bool:
    """`instant` is the start of local `day`: its local midnight, or the first instant
    after a gap that swallowed that midnight."""
    local = instant.astimezone(tz)
    if local.replace(tzinfo=None) == datetime(day.year, day.month, day.day):
        return local.fold == 0 or datetime.combine(day, datetime.min.time(), tzinfo=tz).astimezone(UTC) == instant
    # a gap: the wall clock jumps from before midnight to after it at this very instant
    before = (instant - timedelta(microseconds=1)).astimezone(tz)
    return before.date() < day and local.date() == day and local.utcoffset() != before.utcoffset()


def test_twenty_zones_every_anchor_day_ten_years_tile_at_local_midnight() -> None:
    assert len(ZONES) == 20
    checked = 0
    for zone in ZONES:
        tz = zone_info(zone)
        for anchor_day in range(1, 32):
            # An anchor in January (every day 1..31 exists), at an odd local hour: only its date counts.
            anchor = datetime(YEARS[0], 1, anchor_day, 15, 37, tzinfo=tz).astimezone(UTC)
            prev_end = None
            for n in range(len(YEARS) * 12):
                start, end = period_containing(anchor, IntervalUnit.MONTH, 1,
                                               add_interval(anchor, IntervalUnit.MONTH, 1, n, zone=zone), zone=zone)
                year, month = YEARS[0] + n // 12, n % 12 + 1
                expected_day = date(year, month, min(anchor_day, _days_in(year, month)))
                assert _is_local_start(start, expected_day, tz), (zone, anchor_day, n, start)
                assert start < end
                if prev_end is not None:
                    assert start == prev_end, (zone, anchor_day, n)  # no gap, no overlap
                prev_end = end
                checked += 1
    assert checked == 20 * 31 * 120


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), anchor_day=st.integers(1, 31), offset_s=st.integers(0, 10 * 366 * 86400),
       unit=st.sampled_from([IntervalUnit.DAY, IntervalUnit.WEEK, IntervalUnit.MONTH, IntervalUnit.YEAR]),
       count=st.integers(1, 3))
def test_any_instant_lies_in_exactly_one_period(zone: str, anchor_day: int, offset_s: int, unit: IntervalUnit,
                                                count: int) -> None:
    tz = zone_info(zone)
    anchor = datetime(2020, 1, anchor_day, 9, tzinfo=tz).astimezone(UTC)
    t = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=offset_s)
    start, end = period_containing(anchor, unit, count, t, zone=zone)
    assert start <= t < end
    n = boundary_index(anchor, unit, count, t, zone=zone)
    assert add_interval(anchor, unit, count, n, zone=zone) == start
    assert add_interval(anchor, unit, count, n + 1, zone=zone) == end
    # the neighbours tile with it
    assert period_containing(anchor, unit, count, end, zone=zone)[0] == end
    assert period_containing(anchor, unit, count, start - timedelta(microseconds=1), zone=zone)[1] == start
    # every boundary is the start of a local day
    assert _is_local_start(start, start.astimezone(tz).date(), tz), (zone, start)


def test_midnight_in_a_gap_is_the_first_instant_after_it() -> None:
    # America/Havana springs forward at 00:00 -> 01:00 (2024-03-10): midnight does not exist.
    start = local_midnight(date(2024, 3, 10), "America/Havana")
    assert start == datetime(2024, 3, 10, 5, 0, tzinfo=UTC)  # 01:00 CDT (UTC-4)
    assert start.astimezone(zone_info("America/Havana")).hour == 1
    assert (start - timedelta(seconds=1)).astimezone(zone_info("America/Havana")).day == 9


def test_ambiguous_midnight_is_the_first_occurrence() -> None:
    # America/Havana falls back at 01:00 -> 00:00 (2024-11-03): 00:00..01:00 happens twice.
    start = local_midnight(date(2024, 11, 3), "America/Havana")
    assert start == datetime(2024, 11, 3, 4, 0, tzinfo=UTC)  # the first 00:00, still CDT (UTC-4)


def test_dst_days_last_23_and_25_hours_in_real_time() -> None:
    anchor = datetime(2026, 3, 1, 12, tzinfo=UTC)
    spring = period_containing(anchor, IntervalUnit.DAY, 1, datetime(2026, 3, 29, 12, tzinfo=UTC),
                               zone="Europe/Dublin")
    assert spring[1] - spring[0] == timedelta(hours=23)
    autumn = period_containing(anchor, IntervalUnit.DAY, 1, datetime(2026, 10, 25, 12, tzinfo=UTC),
                               zone="Europe/Dublin")
    assert autumn[1] - autumn[0] == timedelta(hours=25)


def test_utc_keeps_the_anchor_time_of_day_as_before() -> None:
    anchor = datetime(2026, 1, 31, 15, 30, tzinfo=UTC)
    assert add_interval(anchor, IntervalUnit.MONTH, 1) == datetime(2026, 2, 28, 15, 30, tzinfo=UTC)
    assert add_interval(anchor, IntervalUnit.MONTH, 1, zone="UTC") == datetime(2026, 2, 28, 15, 30, tzinfo=UTC)
    # Etc/UTC is a zone like any other: calendar periods from midnight
    assert add_interval(anchor, IntervalUnit.MONTH, 1, zone="Etc/UTC") == datetime(2026, 2, 28, tzinfo=UTC)


@pytest.mark.parametrize("name", ["Mars/Olympus", "europe/nowhere", "../etc/passwd", "/etc/localtime", "A" * 65,
                                  "Europe/Dublin\x00"])
def test_unknown_zones_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_zone(name)


def test_known_zones_and_the_default() -> None:
    assert check_zone("") == "UTC"
    assert check_zone("Asia/Kathmandu") == "Asia/Kathmandu"


def test_the_rules_are_the_pinned_tzdata_packages_not_the_hosts() -> None:
    import tzdata

    # IANA 2026f: Cuba keeps summer time (UTC-4) from 2026; older data falls back to UTC-5.
    if tzdata.IANA_VERSION >= "2026f":
        assert local_midnight(date(2026, 12, 1), "America/Havana") == datetime(2026, 12, 1, 4, tzinfo=UTC)
    assert zone_info("Europe/Dublin").key == "Europe/Dublin"
    assert zone_info("Europe/Dublin") is zone_info("Europe/Dublin")  # read once

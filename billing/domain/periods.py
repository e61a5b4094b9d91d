"""Billing period arithmetic on aware UTC datetimes.

Periods are defined by an anchor (the billing anchor of a subscription), an
interval unit and a count. Boundary ``n`` is ``add_interval(anchor, unit, count, n)``;
period ``n`` is the half-open range ``[boundary(n), boundary(n + 1))``.

* day / week: exact multiples of 24 h / 7 * 24 h (UTC has no DST).
* month / year: calendar months counted from the ANCHOR, never chained from the
  previous boundary, with the day clamped to the end of shorter months and the
  anchor's time of day kept. A Jan 31 anchor gives Feb 28 (29 in leap years),
  Mar 31, Apr 30, May 31, ...; a Feb 29 yearly anchor gives Feb 28 in common years
  and Feb 29 again in leap years. Chaining would instead drift to the 28th forever.

Only timezone-aware datetimes with a UTC offset of zero are accepted (``ValueError``
otherwise); results carry ``datetime.timezone.utc``.

Time zones (``zone``, an IANA name; docs/time.md): in ``"UTC"`` (the default) the rules
above apply unchanged, the anchor's time of day kept. In any other zone periods are
calendar periods of that zone (`billing.domain.zones`): boundary ``n`` is LOCAL MIDNIGHT
of the anchor's local date plus ``n`` intervals (days, weeks, or months clamped as above),
so only the anchor's local date matters, and a day lasts 23, 24 or 25 hours across DST.
Boundaries are still returned as UTC instants.
"""

from __future__ import annotations

from functools import lru_cache
from datetime import date, datetime, timedelta, timezone

from billing.domain.plans import IntervalUnit
from billing.domain.zones import UTC_ZONE, local_date, local_midnight

__all__ = ["add_interval", "period_containing", "boundary_index", "to_us", "from_us"]

_ZERO = timedelta(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float on the way): the time unit of
    every Avro payload (`*_us` fields)."""
    return (dt - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _utc(dt: datetime, name: str) -> datetime:
    if not isinstance(dt, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware UTC, got naive {dt.isoformat()}")
    if dt.utcoffset() != _ZERO:
        raise ValueError(f"{name} must be in UTC, got offset {dt.utcoffset()} ({dt.isoformat()})")
    return dt if dt.tzinfo is timezone.utc else dt.replace(tzinfo=timezone.utc)


def _unit(unit: IntervalUnit | str) -> IntervalUnit:
    return unit if isinstance(unit, IntervalUnit) else IntervalUnit(unit)


def _count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError("count must be an int")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return count


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _month_day(start: date | datetime, months: int) -> tuple[int, int, int]:
    """(year, month, day) ``months`` calendar months after ``start``'s, the day clamped."""
    index = start.year * 12 + (start.month - 1) + months
    year, month0 = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise ValueError("period boundary out of the supported date range")
    day = start.day
    if day > 28:  # clamped to the month's length (calendar.monthrange would also compute a weekday)
        last = (29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28) if month0 == 1 \
            else _MONTH_DAYS[month0 + 1]
        day = min(day, last)
    return year, month0 + 1, day


def _add_months(anchor: datetime, months: int) -> datetime:
    year, month, day = _month_day(anchor, months)
    # The constructor, not anchor.replace(year=..., ...): keyword parsing made it twice as slow.
    return datetime(year, month, day, anchor.hour, anchor.minute, anchor.second, anchor.microsecond,
                    anchor.tzinfo)


def _local_boundary(day0: date, unit: IntervalUnit, count: int, n: int, zone: str) -> datetime:
    """Boundary ``n`` of a zoned subscription: local midnight of the anchor's local date
    ``day0`` plus ``n`` intervals."""
    if unit is IntervalUnit.DAY or unit is IntervalUnit.WEEK:
        try:
            d = day0 + timedelta(days=count * n * (7 if unit is IntervalUnit.WEEK else 1))
        except OverflowError:
            raise ValueError("period boundary out of the supported date range") from None
    else:
        d = date(*_month_day(day0, count * n * (12 if unit is IntervalUnit.YEAR else 1)))
    return local_midnight(d, zone)


def _local_search(anchor: datetime, unit: IntervalUnit, count: int, t: datetime,
                  zone: str) -> tuple[int, datetime, datetime]:
    """`_search` of a zoned subscription: the index is estimated from local dates, then
    settled by comparing instants (a DST gap at midnight moves a boundary by up to hours)."""
    day0, tday = local_date(anchor, zone), local_date(t, zone)
    if unit is IntervalUnit.DAY or unit is IntervalUnit.WEEK:
        n = (tday - day0).days // (count * (7 if unit is IntervalUnit.WEEK else 1))
    else:
        per = count * (12 if unit is IntervalUnit.YEAR else 1)
        n = ((tday.year - day0.year) * 12 + (tday.month - day0.month)) // per
    start, end = _local_boundary(day0, unit, count, n, zone), None
    while start > t:
        n, end = n - 1, start
        start = _local_boundary(day0, unit, count, n, zone)
    if end is None:
        end = _local_boundary(day0, unit, count, n + 1, zone)
    while end <= t:
        n, start = n + 1, end
        end = _local_boundary(day0, unit, count, n + 1, zone)
    return n, start, end


def _boundary(anchor: datetime, unit: IntervalUnit, count: int, n: int) -> datetime:
    if unit is IntervalUnit.DAY or unit is IntervalUnit.WEEK:
        days = count * n * (7 if unit is IntervalUnit.WEEK else 1)
        try:
            return anchor + timedelta(days=days)
        except OverflowError:
            raise ValueError("period boundary out of the supported date range") from None
    months = count * n * (12 if unit is IntervalUnit.YEAR else 1)
    return _add_months(anchor, months)


def add_interval(anchor: datetime, unit: IntervalUnit, count: int, n: int = 1, *, zone: str = UTC_ZONE) -> datetime:
    """The ``n``-th period boundary after ``anchor`` (``n`` may be 0 or negative). In a zone
    other than UTC boundary 0 is the local midnight that starts the anchor's local day."""
    anchor = _utc(anchor, "anchor")
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n must be an int")
    if zone != UTC_ZONE:
        return _local_boundary(local_date(anchor, zone), _unit(unit), _count(count), n, zone)
    return _boundary(anchor, _unit(unit), _count(count), n)


def boundary_index(anchor: datetime, unit: IntervalUnit, count: int, t: datetime, *, zone: str = UTC_ZONE) -> int:
    """The ``n`` with ``add_interval(anchor, .., n) <= t < add_interval(anchor, .., n + 1)``."""
    anchor = _utc(anchor, "anchor")
    t = _utc(t, "t")
    return _search(anchor, _unit(unit), _count(count), t, zone)[0]


def _search(anchor: datetime, unit: IntervalUnit, count: int, t: datetime,
            zone: str = UTC_ZONE) -> tuple[int, datetime, datetime]:
    """``boundary_index`` with the two boundaries around ``t``, kept from the search (each
    one is a calendar computation: a period lookup needs two, not four or five)."""
    if zone != UTC_ZONE:
        return _local_search(anchor, unit, count, t, zone)
    if unit is IntervalUnit.DAY or unit is IntervalUnit.WEEK:
        length = timedelta(days=count * (7 if unit is IntervalUnit.WEEK else 1))
        n = (t - anchor) // length  # exact floor division of timedeltas
        return n, _boundary(anchor, unit, count, n), _boundary(anchor, unit, count, n + 1)
    per = count * (12 if unit is IntervalUnit.YEAR else 1)
    months = (t.year - anchor.year) * 12 + (t.month - anchor.month)
    n = months // per  # estimate; off by at most one because of day/time within the month
    start, end = _add_months(anchor, n * per), None
    while start > t:
        n, end = n - 1, start
        start = _add_months(anchor, n * per)
    if end is None:
        end = _add_months(anchor, (n + 1) * per)
    while end <= t:
        n, start = n + 1, end
        end = _add_months(anchor, (n + 1) * per)
    return n, start, end


def period_containing(
    anchor: datetime, unit: IntervalUnit, count: int, t: datetime, *, zone: str = UTC_ZONE
) -> tuple[datetime, datetime]:
    """The half-open period ``[start, end)`` that contains ``t``.

    ``t`` exactly on a boundary belongs to the period that STARTS there. Works for
    ``t`` before the anchor too. Constant time: the index is computed, not searched.
    """
    # A billing chunk asks the same few questions thousands of times: cache
    # them, but only for exact-type UTC inputs, so that equal-hashing inputs that must be
    # refused (a +00:00 offset that is not timezone.utc, count=True) are never served.
    if (type(anchor) is datetime and type(t) is datetime and anchor.tzinfo is timezone.utc
            and t.tzinfo is timezone.utc and type(count) is int and type(unit) is IntervalUnit
            and type(zone) is str):
        return _period_containing_cached(anchor, unit, count, t, zone)
    return _period_containing(anchor, unit, count, t, zone)


@lru_cache(maxsize=4096)
def _period_containing_cached(
    anchor: datetime, unit: IntervalUnit, count: int, t: datetime, zone: str
) -> tuple[datetime, datetime]:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    _, start, end = _search(anchor, unit, count, t, zone)  # the types were checked by period_containing
    return start, end


def _period_containing(
    anchor: datetime, unit: IntervalUnit, count: int, t: datetime, zone: str
) -> tuple[datetime, datetime]:
    _, start, end = _search(_utc(anchor, "anchor"), _unit(unit), _count(count), _utc(t, "t"), zone)
    return start, end

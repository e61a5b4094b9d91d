"""IANA time zones of subscriptions: validation and local midnight as an instant.

A subscription's zone is an IANA name (``"Europe/Dublin"``), default ``"UTC"``; the
rules are read with `zoneinfo` from the `tzdata` package (pinned, so every process bills
with the same rules, whatever the host's /usr/share/zoneinfo holds).

Local midnight is where a zoned period starts (docs/time.md):

* a midnight that does not exist (a DST gap at midnight, e.g. America/Havana in March)
  is the first instant after the gap, the transition itself;
* a midnight that occurs twice (a fall-back at 01:00 to 00:00) is its FIRST occurrence
  (``fold=0``).
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["UTC_ZONE", "ZONE_MAX", "check_zone", "local_date", "local_midnight", "zone_info"]

UTC_ZONE = "UTC"
ZONE_MAX = 64
_SECOND = timedelta(seconds=1)


@lru_cache(maxsize=1024)
def zone_info(name: str) -> ZoneInfo:
    """The zone's rules from the `tzdata` package, not ZoneInfo(name), which prefers the
    host's /usr/share/zoneinfo: two hosts with different system data would bill the same
    subscription with different boundaries."""
    try:
        data = resources.files("tzdata.zoneinfo").joinpath(*name.split("/"))
        with data.open("rb") as f:
            return ZoneInfo.from_file(f, key=name)
    except (OSError, ValueError):
        raise ZoneInfoNotFoundError(name) from None


def check_zone(name: str) -> str:
    """The zone name if it is a known IANA zone, else ValueError with the reason (the
    caller names the field). Empty means the default, UTC."""
    if not name:
        return UTC_ZONE
    if len(name) > ZONE_MAX or not name.isprintable() or name.startswith("/") or ".." in name:
        raise ValueError("must be an IANA time zone name such as Europe/Dublin")
    try:
        zone_info(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}: must be an IANA time zone name such as Europe/Dublin") \
            from None
    return name


def local_date(t: datetime, zone: str) -> date:
    """The calendar date in ``zone`` of the instant ``t``."""
    return t.astimezone(zone_info(zone)).date()


@lru_cache(maxsize=65536)
def local_midnight(d: date, zone: str) -> datetime:
    """The instant (UTC) at which the day ``d`` starts in ``zone``."""
    tz = zone_info(zone)
    wall = datetime.combine(d, time(0), tzinfo=tz)  # fold=0: the first occurrence when ambiguous
    instant = wall.astimezone(timezone.utc)
    if instant.astimezone(tz).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return instant
    # Midnight falls in a gap: fold=0 maps it past the transition, fold=1 before it; the
    # first instant after the gap is the transition, found to the second by bisection.
    lo = wall.replace(fold=1).astimezone(timezone.utc)
    hi = instant
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > _SECOND:
        mid = lo + ((hi - lo) // 2 // _SECOND) * _SECOND
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi

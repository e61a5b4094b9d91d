"""convert.timestamp by arithmetic sets what protobuf's own Timestamp.FromDatetime sets, for
aware times in any zone, naive (local) times, both ends of the range and microseconds."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp

from billing.api import convert
from billing.v1 import billing_pb2 as pb


def _protobufs(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(timezone.utc))
    return ts


def test_the_same_seconds_and_nanos_as_from_datetime():
    rng = random.Random(7)
    zones = [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11)),
             ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")]
    times = [datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=timezone.utc),
             datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=timezone.utc),
             datetime(2026, 3, 29, 2, 30), datetime(2026, 12, 5, 14, 0, 0, 123456)]  # the last two naive
    for _ in range(2000):
        at = datetime(1900, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=rng.randrange(0, 2 ** 57))
        times.append(at.astimezone(rng.choice(zones)))
    for dt in times:
        assert convert.timestamp(dt) == _protobufs(dt), dt
        msg = pb.Subscription()
        convert.set_time(msg.created_at, dt)
        assert msg.created_at == _protobufs(dt), dt
    assert convert.timestamp(None) is None

"""store.db.json_text: the JSON of the audit rows a billing run writes, by orjson, must be
the audit trail's form (`subscriptions.snapshot`: `isoformat()` times, canonical UUIDs)."""

from __future__ import annotations

import json
import types
from datetime import datetime, timedelta, timezone

import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from hypothesis import given, strategies as st

from billing.store.db import json_text

UTC = timezone.utc


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
       st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30)), None]))
def test_a_datetime_is_written_as_isoformat_writes_it(naive, tz):
    t = naive.replace(tzinfo=tz)
    assert json.loads(json_text({"t": t})) == {"t": t.isoformat()}


@given(st.uuids())
def test_uuids_python_and_asyncpg_are_canonical_text(u):
    assert json.loads(json_text([u, PgUUID(str(u))])) == [str(u), str(u)]


def test_other_values_as_json_dumps_writes_them():
    doc = [("subscription.period_advanced", {"status": "active", "n": 3, "flag": True, "none": None,
                                            "meta": types.MappingProxyType({"k": "é \"q\""})}, None)]
    assert json.loads(json_text(doc)) == json.loads(json.dumps(
        [["subscription.period_advanced", {"status": "active", "n": 3, "flag": True, "none": None,
                                           "meta": {"k": "é \"q\""}}, None]]))


def test_a_value_json_cannot_write_is_refused():
    with pytest.raises(TypeError):
        json_text({"x": object()})
    with pytest.raises(TypeError):
        json_text({"x": {1, 2}})

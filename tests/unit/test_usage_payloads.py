"""Usage payloads: Avro and CloudEvents JSON -> UsageEvent (consumers/usage_payloads.py)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import codec
from billing.services.usage import UsageEvent, to_us
from consumers import usage_payloads
from consumers.runner import Message
from consumers.usage_payloads import decode_batch, parse_rfc3339_us
from billing.services.usage_ingest import as_event

TENANT = "6f1c2a0e-3b7d-4c55-9a8e-2f4d1c0b9e77"
SUB = "0b7d3c1e-6b55-4c4e-9c3e-3f9d2a1b7c11"
T0 = 1_764_000_000_123_456  # 2025-11-24T16:00:00.123456Z
T0_TEXT = "2025-11-24T16:00:00.123456Z"


def msg(value, offset: int = 0, headers: dict | None = None, key: bytes | None = SUB.encode()) -> Message:
    return Message("billing.usage.v1", 0, offset, key, value, headers or {}, None)


def avro(i: int = 1, **over) -> bytes:
    rec = {"event_id": f"evt-{i}", "tenant_id": TENANT, "subscription_id": SUB, "metric_code": "api_calls",
           "quantity": "12.5", "occurred_at_us": T0, "properties": {}}
    rec.update(over)
    return codec.encode(codec.Schema.USAGE_EVENT, rec)


def cloudevent(i: int = 1, *, drop: tuple[str, ...] = (), data: dict | None = None, **over) -> dict:
    ce = {"specversion": "1.0", "id": f"evt-{i}", "source": "/meters/api", "type": "com.example.usage",
          "time": T0_TEXT, "subject": SUB, "tenantid": TENANT, "datacontenttype": "application/json",
          "data": {"metric": "api_calls", "quantity": "12.5"}}
    ce["data"].update(data or {})
    ce.update(over)
    for name in drop:
        if name.startswith("data."):
            ce["data"].pop(name[5:])
        else:
            ce.pop(name)
    return ce


def ce_bytes(i: int = 1, **kw) -> bytes:
    return json.dumps(cloudevent(i, **kw)).encode()


def one(value, headers=None):
    """Decode a single message: the event, or the dead letter."""
    events, positions, dead = decode_batch([msg(value, headers=headers)])
    assert len(events) + len(dead) == 1
    if events:
        assert positions == [0]
        return events[0]
    assert positions == []
    return dead[0]


def expected(i: int = 1, **over) -> UsageEvent:
    return UsageEvent(f"evt-{i}", TENANT, SUB, "api_calls", "12.5", T0, None)._replace(**over)


# ------------------------------------------------------------------ both formats agree


def test_avro_and_cloudevents_decode_to_identical_events():
    props = {"region": "eu-west-1", "endpoint": "/v1/charges"}
    batch = [msg(avro(1), 0), msg(ce_bytes(1), 1), msg(avro(2, properties=props), 2),
             msg(ce_bytes(2, data={"properties": props}), 3)]
    events, positions, dead = decode_batch(batch)
    assert dead == [] and positions == [0, 1, 2, 3]
    assert events[0] == events[1] == expected(1)
    assert events[2] == events[3] == expected(2, properties=props)


def test_empty_properties_are_none_in_both_formats():
    assert as_event(one(avro(properties={}))).properties is None
    assert one(ce_bytes(data={"properties": {}})).properties is None
    assert one(ce_bytes()).properties is None


def test_avro_the_hand_reader_leaves_is_decoded_in_one_codec_call(monkeypatch):
    # Records with properties are the codec's (consumers/usage_avro.py reads the others).
    calls = []
    real = codec.decode_many

    def spy(schema, values, **kw):
        values = list(values)
        calls.append(len(values))
        return real(schema, values, **kw)

    monkeypatch.setattr(codec, "decode_many", spy)
    batch = [msg((avro(i, properties={"k": "v"}) if i % 2 else avro(i)) if i % 3 else ce_bytes(i), i)
             for i in range(30)]
    events, positions, dead = decode_batch(batch)
    assert calls == [10] and len(events) == 30 and not dead
    assert [as_event(e).event_id for e in events] == [f"evt-{i}" for i in range(30)]


def test_empty_batch():
    assert decode_batch([]) == ([], [], [])


# ------------------------------------------------------------------ RFC 3339


@pytest.mark.parametrize("text, us", [
    ("2025-11-24T16:00:00.123456Z", T0),
    ("2025-11-24T18:00:00.123456+02:00", T0),
    ("2025-11-24T13:30:00.123456-02:30", T0),
    ("2025-11-24T16:00:00.123456+00:00", T0),
    ("2025-11-24T16:00:00.123456-00:00", T0),
    ("2025-11-24t16:00:00.123456z", T0),
    ("2025-11-24 16:00:00.123456Z", T0),
    ("2025-11-24T16:00:00Z", T0 - 123_456),  # no fraction
    ("2025-11-24T16:00:00.1Z", T0 - 23_456),
    ("2025-11-24T16:00:00.123Z", T0 - 456),
    ("2025-11-24T16:00:00.123456789Z", T0),  # nanoseconds: truncated to microseconds
    ("2025-11-24T16:00:00.1234569999+01:00", T0 - 3_600_000_000),
    ("2025-11-24T00:30:00+01:00", to_us(datetime(2025, 11, 23, 23, 30, tzinfo=timezone.utc))),  # day before in UTC
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.999999Z", -1),
    ("2024-02-29T12:00:00Z", to_us(datetime(2024, 2, 29, 12, tzinfo=timezone.utc))),
    ("2000-02-29T00:00:00Z", to_us(datetime(2000, 2, 29, tzinfo=timezone.utc))),
    ("0001-01-01T00:00:00Z", to_us(datetime(1, 1, 1, tzinfo=timezone.utc))),
    ("9999-12-31T23:59:59.999999Z", to_us(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc))),
])
def test_rfc3339_variants(text, us):
    assert parse_rfc3339_us(text) == us
    assert one(ce_bytes(time=text)).occurred_at_us == us


@pytest.mark.parametrize("text", [
    "2025-11-24T16:00:00",  # no offset: local time of nobody knows where
    "2025-11-24",
    "2025-11-24T16:00Z",
    "2025-11-24T16:00:00.Z",
    "2025-11-24T16:00:00,5Z",
    "2025-11-24T16:00:00+0200",
    "2025-11-24T16:00:00+02",
    "2025-11-24T16:00:00+24:00",
    "2025-11-24T16:00:00+02:60",
    "2025-11-24T24:00:00Z",
    "2025-11-24T16:60:00Z",
    "2025-11-24T16:00:60Z",  # leap seconds are refused
    "2025-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z",
    "2025-13-01T00:00:00Z",
    "2025-00-01T00:00:00Z",
    "2025-04-31T00:00:00Z",
    "2025-11-00T00:00:00Z",
    "２０２５-11-24T16:00:00Z",  # non-ASCII digits
    "+2025-11-24T16:00:00Z",
    " 2025-11-24T16:00:00Z",
    "2025-11-24T16:00:00Z ",
    "2025-11-24T16:00:00Zjunk",
    "",
    "1764000000",
])
def test_rfc3339_refused(text):
    assert parse_rfc3339_us(text) is None
    dead = one(ce_bytes(time=text))
    assert dead.reason == "invalid_cloudevent" and dead.detail.startswith("time:")


@pytest.mark.parametrize("value", [1_764_000_000, 1.5, True, [], {}])
def test_time_must_be_a_string(value):
    dead = one(ce_bytes(time=value))
    assert dead.reason == "invalid_cloudevent" and dead.detail.startswith("time:")


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
       st.sampled_from(["seconds", "milliseconds", "microseconds"]))
def test_rfc3339_agrees_with_datetime(naive, offset_min, timespec):
    dt = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    text = dt.isoformat(timespec=timespec)
    truncated = dt.replace(microsecond=dt.microsecond // 1000 * 1000 if timespec == "milliseconds"
                           else 0 if timespec == "seconds" else dt.microsecond)
    assert parse_rfc3339_us(text) == to_us(truncated)
    assert parse_rfc3339_us(text.replace("+00:00", "Z")) == to_us(truncated)


# ------------------------------------------------------------------ quantity


@pytest.mark.parametrize("raw, text", [
    ('"12.5"', "12.5"),
    ('"12.50"', "12.50"),
    ("12.5", "12.5"),
    ("0.1", "0.1"),  # a float would print 0.1 but be 0.1000000000000000055...
    ("0.30000000000000004", "0.30000000000000004"),
    ("12", "12"),
    ("12.50", "12.50"),
    ("0", "0"),
    ("123456789012345678901234567890", "123456789012345678901234567890"),
    # Kept as written; ingest refuses exponents (invalid_quantity) and signs
    # (negative_quantity): decoding does not judge the value.
    ("1e3", "1e3"),
    ("1.5E-7", "1.5E-7"),
    ("-2", "-2"),
    ('"abc"', "abc"),
])
def test_quantity_keeps_the_exact_text(raw, text):
    body = ce_bytes().replace(b'"quantity": "12.5"', b'"quantity": ' + raw.encode())
    assert raw.encode() in body
    event = one(body)
    assert event.quantity == text and type(event.quantity) is str


@pytest.mark.parametrize("raw", ["true", "null", "[]", "{}", "NaN", "Infinity", "-Infinity"])
def test_quantity_of_another_type_is_refused(raw):
    body = ce_bytes().replace(b'"quantity": "12.5"', b'"quantity": ' + raw.encode())
    dead = one(body)
    assert dead.reason == "invalid_cloudevent" and dead.detail.startswith("data.quantity:")


# ------------------------------------------------------------------ CloudEvents fields


@pytest.mark.parametrize("field", ["specversion", "id", "time", "tenantid", "subject", "data", "data.metric",
                                   "data.quantity"])
def test_each_missing_field_is_named(field):
    dead = one(ce_bytes(drop=(field,)))
    assert dead.reason == "invalid_cloudevent"
    assert dead.detail == f"{field}: missing"


@pytest.mark.parametrize("over, field", [
    ({"specversion": "0.3"}, "specversion"),
    ({"specversion": 1.0}, "specversion"),
    ({"id": ""}, "id"),
    ({"id": 17}, "id"),
    ({"tenantid": 5}, "tenantid"),
    ({"subject": ["x"]}, "subject"),
    ({"data": "api_calls=3"}, "data"),
    ({"data": None, "data_base64": "AAAA"}, "data"),
    ({"datacontenttype": "application/xml"}, "datacontenttype"),
    ({"data": {"metric": 7, "quantity": "1"}}, "data.metric"),
    ({"data": {"metric": "api_calls", "quantity": "1", "properties": {"region": 5}}}, "data.properties"),
    ({"data": {"metric": "api_calls", "quantity": "1", "properties": {"region": None}}}, "data.properties"),
    ({"data": {"metric": "api_calls", "quantity": "1", "properties": ["region"]}}, "data.properties"),
    ({"id": "evt-\u0000"}, "id"),
    ({"subject": "\ud800"}, "subject"),
    ({"data": {"metric": "api_calls", "quantity": "1", "properties": {"k": "\udfff"}}}, "data.properties"),
])
def test_wrong_fields_are_named(over, field):
    ce = cloudevent()
    ce.update(over)
    if ce.get("data") is None:
        del ce["data"]
    dead = one(json.dumps(ce).encode())
    assert dead.reason == "invalid_cloudevent"
    assert dead.detail.startswith(f"{field}:"), dead.detail


def test_tenant_and_subscription_from_data_when_absent():
    ce = cloudevent(drop=("tenantid", "subject"), data={"tenant_id": TENANT, "subscription_id": SUB})
    assert one(json.dumps(ce).encode()) == expected()


def test_top_level_attributes_win_over_data():
    ce = cloudevent(data={"tenant_id": "other-tenant", "subscription_id": "other-sub"})
    assert one(json.dumps(ce).encode()) == expected()


def test_metric_code_alias():
    ce = cloudevent(drop=("data.metric",), data={"metric_code": "api_calls"})
    assert one(json.dumps(ce).encode()) == expected()


@pytest.mark.parametrize("dct", ["application/json; charset=utf-8", "text/json", "application/vnd.usage+json"])
def test_json_datacontenttypes(dct):
    assert one(ce_bytes(datacontenttype=dct)) == expected()


def test_optional_attributes_may_be_absent():
    assert one(ce_bytes(drop=("source", "type", "datacontenttype"))) == expected()


def test_escaped_unicode_text_is_kept():
    assert one(ce_bytes(id="evt-\u00e9\u20ac")).event_id == "evt-é€"


def test_content_type_header_lets_whitespace_lead():
    body = b"\n  " + ce_bytes()
    header = {"content-type": b"application/cloudevents+json; charset=UTF-8"}
    assert one(body, headers=header) == expected()
    assert one(body).reason == "undecodable"


# ------------------------------------------------------------------ undecodable


@pytest.mark.parametrize("value", [
    None,  # tombstone
    b"",
    b"\x00\x01\x02garbage",
    b"hello",
    b"[" + ce_bytes() + b"]",  # batch mode
    b"{",
    b'{"specversion": "1.0"',
    ce_bytes() + b"{}",  # trailing data
    b'{"id": "\xff\xfe"}',  # not UTF-8
    b"{" * 100_000,  # nesting too deep for the parser
    avro()[:5],  # truncated header
    avro()[:-3],  # truncated body
    avro() + b"\x00",  # trailing bytes
    codec.MAGIC + b"\x00" * 8 + avro()[10:],  # unknown schema fingerprint
])
def test_undecodable(value):
    dead = one(value)
    assert dead.reason == "undecodable" and dead.detail


def test_wrong_avro_record_type_is_undecodable():
    other = codec.encode(codec.Schema.BILLING_RUN_REQUEST, _billing_run_request())
    dead = one(other)
    assert dead.reason == "undecodable" and "BillingRunRequest" in dead.detail


def _billing_run_request() -> dict:
    schema = json.loads((codec.SCHEMA_DIR / "billing_run_request.avsc").read_text())

    def sample(t):
        if isinstance(t, list):
            return None if "null" in t else sample(t[0])
        if isinstance(t, dict):
            if t["type"] == "record":
                return {f["name"]: sample(f["type"]) for f in t["fields"]}
            if t["type"] == "map":
                return {}
            if t["type"] == "array":
                return []
            if t["type"] == "enum":
                return t["symbols"][0]
            return sample(t["type"])
        return {"string": "x", "long": 1, "int": 1, "boolean": False, "double": 1.0, "float": 1.0,
                "bytes": b"", "null": None}[t]

    return sample(schema)


def test_bytearray_value_is_decoded():
    assert one(bytearray(avro())) == expected()


def test_binary_mode_cloudevent_is_named_in_the_detail():
    dead = one(b"12.5", headers={"ce_specversion": b"1.0", "ce_id": b"evt-1"})
    assert dead.reason == "undecodable" and "binary mode" in dead.detail


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), st.none(),
                          st.binary(max_size=80).map(lambda b: codec.MAGIC + b),
                          st.binary(max_size=80).map(lambda b: avro()[:10] + b),
                          st.binary(max_size=80).map(lambda b: b"{" + b)), max_size=20))
def test_random_bytes_never_raise(values):
    batch = [msg(v, i) for i, v in enumerate(values)]
    events, positions, dead = decode_batch(batch)
    assert len(events) == len(positions)
    assert len(events) + len(dead) == len(batch)
    assert sorted(positions + [d.message.offset for d in dead]) == list(range(len(batch)))
    for d in dead:
        assert d.reason in ("undecodable", "invalid_cloudevent") and d.detail
        v = d.message.value
        if not (v and (v.startswith(b"{") or v.startswith(codec.MAGIC))):
            assert d.reason == "undecodable"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["specversion", "id", "time", "subject", "tenantid", "data",
                                        "datacontenttype", "data_base64"]), _json_values),
       st.dictionaries(st.sampled_from(["metric", "metric_code", "quantity", "properties", "tenant_id",
                                        "subscription_id"]), _json_values))
def test_random_cloudevents_never_raise(attrs, data):
    base = cloudevent()
    base.update(attrs)
    if isinstance(base.get("data"), dict):
        base["data"].update(data)
    events, positions, dead = decode_batch([msg(json.dumps(base).encode())])
    assert len(events) + len(dead) == 1
    for e in events:
        assert all(type(getattr(e, f)) is str for f in ("event_id", "tenant_id", "subscription_id", "metric_code",
                                                         "quantity"))
        assert type(e.occurred_at_us) is int
        assert e.properties is None or all(type(v) is str for v in e.properties.values())


# ------------------------------------------------------------------ positions


def test_mixed_batch_keeps_positions_and_order():
    values = [
        avro(0),  # 0
        b"garbage",  # 1 undecodable
        ce_bytes(2),  # 2
        avro(3)[:-2],  # 3 undecodable (truncated Avro)
        ce_bytes(4, drop=("time",)),  # 4 invalid_cloudevent
        None,  # 5 undecodable
        avro(6, quantity="-1"),  # 6 decodes: ingest refuses the quantity
        ce_bytes(7, data={"quantity": 3}),  # 7
        avro(8),  # 8
        avro(8),  # 9 a duplicate decodes twice; ingest counts it once
        codec.MAGIC + b"\x01" * 30,  # 10 undecodable
    ]
    batch = [msg(v, 100 + i) for i, v in enumerate(values)]
    events, positions, dead = decode_batch(batch)
    assert positions == [0, 2, 6, 7, 8, 9]
    assert [as_event(e).event_id for e in events] == ["evt-0", "evt-2", "evt-6", "evt-7", "evt-8", "evt-8"]
    for e, p in zip(events, positions):
        assert as_event(e).event_id == f"evt-{p if p != 9 else 8}"
    assert as_event(events[2]).quantity == "-1" and as_event(events[3]).quantity == "3"
    assert [(d.message.offset, d.reason) for d in dead] == [
        (101, "undecodable"), (103, "undecodable"), (104, "invalid_cloudevent"), (105, "undecodable"),
        (110, "undecodable")]
    assert all(d.message is batch[d.message.offset - 100] for d in dead)


def test_codec_failure_falls_back_to_one_by_one(monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(codec, "decode_many", broken)
    events, positions, dead = decode_batch([msg(avro(0), 0), msg(b"\xc3\x01xx", 1), msg(avro(2), 2)])
    assert positions == [0, 2] and [d.message.offset for d in dead] == [1]
    assert usage_payloads.decode_batch is decode_batch

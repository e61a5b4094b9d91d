"""Issue #8 item 3, the pure half: abusive payloads through the usage decoder
(consumers/usage_payloads.py) and the command codec, no broker.

Whatever arrives - valid Avro mutated at random (truncated, bytes flipped, junk appended),
a wrong schema fingerprint, Avro of another record type, valid Avro written with a forged
schema of the wrong field types under the right fingerprint, CloudEvents whose every
attribute is any JSON value, enormous values - the decoder never raises, accounts for
every message exactly once (an event or a dead letter), dead-letters only with a known
reason and a detail, and hands on only events whose fields have the types ingest expects.
The command codec raises only CodecError (which the command consumer dead-letters).

FUZZ_EXAMPLES=<n> raises the examples per test (default 300, derandomized).
"""
from __future__ import annotations

import io
import json
import os
import uuid

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import codec
from billing.codec import Schema
from billing.services.usage_ingest import as_event
from consumers.runner import Message
from consumers.usage_payloads import decode_batch

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 300)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_EXAMPLES"),
                database=None, suppress_health_check=list(HealthCheck))
REASONS = {"undecodable", "invalid_cloudevent"}
TENANT, SUB = str(uuid.uuid4()), str(uuid.uuid4())

text = st.text(max_size=30) | st.sampled_from(["", "\x00", "a\x00", "😀", "x" * 300])
usage_records = st.fixed_dictionaries({
    "event_id": text, "tenant_id": st.just(TENANT) | text, "subscription_id": st.just(SUB) | text,
    "metric_code": st.just("calls") | text, "quantity": st.sampled_from(["1", "-1", "1e999999", "NaN", "0.5"]) | text,
    "occurred_at_us": st.integers(-(2**63), 2**63 - 1), "properties": st.dictionaries(text, text, max_size=3),
})


def msg(value, i=0, headers=None) -> Message:
    return Message("billing.usage.v1", 0, i, b"k", value, headers or {}, None)


def check(batch: list[Message]):
    """The decoder's contract on any batch; returns the dead letters."""
    events, positions, dead = decode_batch(batch)
    assert len(events) == len(positions)
    dead_pos = [next(i for i, m in enumerate(batch) if m is d.message) for d in dead]
    assert sorted(positions + dead_pos) == list(range(len(batch))), "every message exactly once"
    assert positions == sorted(positions) and dead_pos == sorted(dead_pos), "batch order kept"
    for d in dead:
        assert d.reason in REASONS and d.detail
    for e in map(as_event, events):  # the hand reader gives plain tuples
        assert all(type(getattr(e, f)) is str for f in
                   ("event_id", "tenant_id", "subscription_id", "metric_code", "quantity"))
        assert type(e.occurred_at_us) is int
        assert e.properties is None or (type(e.properties) is dict and e.properties and all(
            type(k) is str and type(v) is str for k, v in e.properties.items()))
    return dead


# ------------------------------------------------------------------ Avro, mutated


@st.composite
def mutated_avro(draw):
    raw = bytearray(codec.encode(Schema.USAGE_EVENT, draw(usage_records)))
    kind = draw(st.sampled_from(["truncate", "flip", "append", "fingerprint", "body"]))
    if kind == "truncate":
        del raw[draw(st.integers(0, len(raw) - 1)):]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= draw(st.integers(1, 255))
    elif kind == "append":
        raw += draw(st.binary(min_size=1, max_size=20))
    elif kind == "fingerprint":
        raw[2:10] = draw(st.binary(min_size=8, max_size=8))
    else:
        raw[10:] = draw(st.binary(max_size=100))
    return bytes(raw)


@FUZZ
@given(st.lists(mutated_avro(), min_size=1, max_size=8))
def test_mutated_avro_is_decoded_or_dead_lettered(values):
    check([msg(v, i) for i, v in enumerate(values)])


@FUZZ
@given(st.binary(min_size=8, max_size=8), st.binary(max_size=64))
def test_unknown_fingerprint_is_dead_lettered_naming_it(fp, body):
    if fp in {codec.fingerprint(s) for s in Schema}:
        return
    dead = check([msg(codec.MAGIC + fp + body)])
    assert len(dead) == 1 and dead[0].reason == "undecodable" and fp.hex() in dead[0].detail


OTHER_RECORDS = {
    Schema.SUBSCRIPTION_COMMAND: {"command_id": "c", "tenant_id": TENANT, "subscription_id": SUB, "issued_at_us": 1,
                                  "command": ("billing.v1.ActivateSubscription", {})},
    Schema.BILLING_RUN_REQUEST: {"run_id": str(uuid.uuid4()), "tenant_id": TENANT, "as_of_us": 1, "shard": 0,
                                 "shard_count": 1, "requested_at_us": 1},
}


@pytest.mark.parametrize("schema", list(OTHER_RECORDS))
def test_avro_of_another_record_type_is_dead_lettered(schema):
    dead = check([msg(codec.encode(schema, OTHER_RECORDS[schema]))])
    assert len(dead) == 1 and dead[0].reason == "undecodable" and schema.full_name in dead[0].detail


# Valid Avro, written with a schema of the same name and the wrong field types, under the
# usage fingerprint: the bytes are a well-formed record of ANOTHER shape.
_WRONG_TYPES = [
    {"event_id": "long", "occurred_at_us": "string"},
    {"quantity": "double"},
    {"occurred_at_us": "int", "properties": {"type": "array", "items": "string"}},
    {"tenant_id": "bytes", "subscription_id": "boolean"},
    {"properties": {"type": "map", "values": "long"}},
    {"metric_code": ["null", "string"]},
]


def _forged(overrides: dict) -> dict:
    fields = [{"name": n, "type": overrides.get(n, t)} for n, t in [
        ("event_id", "string"), ("tenant_id", "string"), ("subscription_id", "string"), ("metric_code", "string"),
        ("quantity", "string"), ("occurred_at_us", "long"),
        ("properties", {"type": "map", "values": "string"})]]
    return parse_schema({"type": "record", "name": "UsageEvent", "namespace": "billing.v1", "fields": fields})


def _value_for(t):
    if isinstance(t, list):
        return st.none() | st.text(max_size=10)
    if isinstance(t, dict):
        inner = {"string": st.text(max_size=5), "long": st.integers(-(2**63), 2**63 - 1)}[t.get("items") or t["values"]]
        return st.lists(inner, max_size=3) if t["type"] == "array" else st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3)
    return {"string": st.text(max_size=20), "long": st.integers(-(2**63), 2**63 - 1),
            "int": st.integers(-(2**31), 2**31 - 1), "double": st.floats(), "bytes": st.binary(max_size=20),
            "boolean": st.booleans()}[t]


@FUZZ
@given(st.data())
def test_valid_avro_of_the_wrong_types_under_the_usage_fingerprint(data):
    overrides = data.draw(st.sampled_from(_WRONG_TYPES))
    schema = _forged(overrides)
    record = {f["name"]: data.draw(_value_for(f["type"]) if f["name"] in overrides else _value_for(
        f["type"] if not isinstance(f["type"], dict) else f["type"])) for f in schema["fields"]}
    buf = io.BytesIO()
    schemaless_writer(buf, schema, record)
    check([msg(codec.MAGIC + codec.fingerprint(Schema.USAGE_EVENT) + buf.getvalue())])


# ------------------------------------------------------------------ CloudEvents JSON

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)
ATTRS = ["specversion", "id", "time", "subject", "tenantid", "source", "type", "datacontenttype", "data",
         "data_base64"]
DATA = ["metric", "metric_code", "quantity", "properties", "tenant_id", "subscription_id"]
GOOD = {"specversion": "1.0", "id": "e1", "time": "2026-01-01T00:00:00Z", "subject": SUB, "tenantid": TENANT,
        "source": "s", "type": "t", "data": {"metric": "calls", "quantity": "1"}}


@st.composite
def cloudevents(draw):
    ce = json.loads(json.dumps(GOOD))
    for name in draw(st.sets(st.sampled_from(ATTRS), max_size=4)):  # break some attributes
        if draw(st.booleans()):
            ce.pop(name, None)
        else:
            ce[name] = draw(json_values)
    if isinstance(ce.get("data"), dict):
        for name in draw(st.sets(st.sampled_from(DATA), max_size=3)):
            if draw(st.booleans()):
                ce["data"].pop(name, None)
            else:
                ce["data"][name] = draw(json_values)
    raw = json.dumps(ce, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # and sometimes broken JSON
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


@FUZZ
@given(st.lists(cloudevents(), min_size=1, max_size=8))
def test_cloudevents_with_any_json_values(values):
    check([msg(v, i) for i, v in enumerate(values)])


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800", "\\udfff"])
@pytest.mark.parametrize("field", ["id", "tenantid", "subject", "data.metric", "data.quantity", "data.properties"])
def test_escapes_postgresql_refuses_are_dead_lettered(field, escape):
    ce = json.loads(json.dumps(GOOD))
    target, name = (ce["data"], field[5:]) if field.startswith("data.") else (ce, field)
    target[name] = {"k": "@"} if name == "properties" else "x@"
    raw = json.dumps(ce).replace("@", escape).encode()
    dead = check([msg(raw)])
    assert len(dead) == 1 and dead[0].reason == "invalid_cloudevent" and dead[0].detail.startswith(field)


def test_enormous_messages_are_decoded_or_dead_lettered_whole():
    """Near the broker's 10 MiB limit: random bytes, a CloudEvent with a huge property, Avro
    with a huge event id, deeply nested JSON."""
    big = 9 * 1024 * 1024
    huge_ce = json.loads(json.dumps(GOOD))
    huge_ce["data"]["properties"] = {"blob": "x" * big}
    values = [os.urandom(big), json.dumps(huge_ce).encode(),
              codec.encode(Schema.USAGE_EVENT, {"event_id": "e" * big, "tenant_id": TENANT, "subscription_id": SUB,
                                               "metric_code": "calls", "quantity": "1", "occurred_at_us": 0,
                                               "properties": {}}),
              b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}", b"[" * 1_000_000]
    events, positions, dead = decode_batch([msg(v, i) for i, v in enumerate(values)])
    assert positions == [1, 2]  # well-formed, if absurd: ingest decides (metric, sizes, event id length)
    assert [d.message.offset for d in dead] == [0, 3, 4] and {d.reason for d in dead} == {"undecodable"}


# ------------------------------------------------------------------ the command codec


@FUZZ
@given(st.sampled_from(list(Schema)), st.binary(max_size=300), st.integers(0, 400))
def test_command_codec_raises_only_codec_errors(other, body, cut):
    good = codec.encode(Schema.SUBSCRIPTION_COMMAND, OTHER_RECORDS[Schema.SUBSCRIPTION_COMMAND])
    for value in (good[:cut], good[:10] + body, codec.MAGIC + codec.fingerprint(other) + body, body):
        try:
            record = codec.decode(Schema.SUBSCRIPTION_COMMAND, value)
        except codec.CodecError:
            continue
        assert isinstance(record, dict)  # decoded means a whole record, nothing else


@pytest.mark.parametrize("quantity", ["１２", "١٢", "۱۲", "१२", "1.５", "１", "12"])
def test_only_ascii_digits_make_a_quantity(quantity):
    """PostgreSQL's numeric takes ASCII digits only; anything else must be refused by
    validation, one event at a time, not by the database for the whole batch."""
    from billing.services.usage import check_quantity

    assert check_quantity(quantity) == (None if quantity == "12" else "invalid_quantity")

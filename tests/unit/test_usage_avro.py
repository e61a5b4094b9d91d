"""The hand-written reader of the usage record (consumers/usage_avro.py) against the codec:
the same event for every record it reads, and None (the codec's turn) for any other. Every
test runs against the module as written and against its compiled build (billing/native.py),
which the consumer uses when `make install` could build it."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import codec, native
from consumers import usage_avro, usage_payloads
from consumers.usage_payloads import decode_batch
from consumers.runner import Message
from billing.services.usage_ingest import as_event

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
_record = st.fixed_dictionaries({
    "event_id": _text, "tenant_id": _text, "subscription_id": _text, "metric_code": _text, "quantity": _text,
    "occurred_at_us": st.integers(-(2**63), 2**63 - 1), "properties": st.just({})})


def _encode(rec: dict) -> bytes:
    return codec.encode(codec.Schema.USAGE_EVENT, rec)


@pytest.fixture(scope="module", params=["pure", "compiled"])
def reader(request):
    if request.param == "pure":
        return usage_avro
    built = native.compiled(usage_avro)
    if built is usage_avro:
        if native.build_file(usage_avro.__name__) is not None:
            pytest.fail("the compiled build of consumers/usage_avro.py is stale: run `make install`")
        pytest.skip("no compiled build of consumers/usage_avro.py (make install builds it when it can)")
    return built


def test_layout_matches_the_current_schema(reader):
    assert reader.decode is not None


@settings(max_examples=400, deadline=None)
@given(rec=_record)
def test_reads_what_the_codec_reads(reader, rec):
    value = _encode(rec)
    event = reader.decode(value, reader.Strings())
    assert event is not None
    want = codec.decode(codec.Schema.USAGE_EVENT, value)
    assert tuple(event) == (want["event_id"], want["tenant_id"], want["subscription_id"],
                                          want["metric_code"], want["quantity"], want["occurred_at_us"], None)


@settings(max_examples=200, deadline=None)
@given(rec=_record, data=st.data())
def test_any_truncation_or_extra_byte_is_left_to_the_codec(reader, rec, data):
    value = _encode(rec)
    cut = data.draw(st.integers(0, len(value) - 1))
    assert reader.decode(value[:cut], reader.Strings()) is None
    assert reader.decode(value + b"\x00", reader.Strings()) is None


def test_properties_bad_utf8_and_other_headers_are_left_to_the_codec(reader):
    rec = {"event_id": "e", "tenant_id": "t", "subscription_id": "s", "metric_code": "m", "quantity": "1",
           "occurred_at_us": 1_764_000_000_000_000, "properties": {"region": "eu"}}
    assert reader.decode(_encode(rec), reader.Strings()) is None
    rec["properties"] = {}
    good = _encode(rec)
    assert as_event(reader.decode(good, reader.Strings())).event_id == "e"
    bad_utf8 = good.replace(b"\x02e", b"\x02\xff", 1)
    assert reader.decode(bad_utf8, reader.Strings()) is None
    other_fp = good[:2] + bytes(8) + good[10:]
    assert reader.decode(other_fp, reader.Strings()) is None


def test_batch_keeps_order_across_the_hand_reader_and_the_codec(reader, monkeypatch):
    monkeypatch.setattr(usage_payloads, "READER", reader)
    base = {"tenant_id": "t", "subscription_id": "s", "metric_code": "m", "quantity": "1",
            "occurred_at_us": 5, "properties": {}}
    values = [_encode({**base, "event_id": "a"}), _encode({**base, "event_id": "b", "properties": {"k": "v"}}),
              b"\xc3\x01" + bytes(8), _encode({**base, "event_id": "c"})]
    batch = [Message("t", 0, i, None, v, {}, None) for i, v in enumerate(values)]
    events, positions, dead = decode_batch(batch)
    assert [e.event_id for e in events] == ["a", "b", "c"]
    assert positions == [0, 1, 3]
    assert events[1].properties == {"k": "v"}
    assert [(d.message.offset, d.reason) for d in dead] == [(2, "undecodable")]

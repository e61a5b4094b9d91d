"""The C-level passes over a whole batch (consumers/batches.py, dlq_limit.py,
usage_payloads.py) against what a message-by-message reading gives."""
from __future__ import annotations

import gc
import json

import pytest

from billing import codec
from consumers.batches import distinct_headers
from consumers.dlq_limit import dead_flags
from consumers.runner import DeadLetter, Message
from consumers.usage_payloads import decode_batch
from billing.services.usage_ingest import as_event

_T = "billing.usage.v1"
_A = {"content-type": b"avro"}
_B = {"content-type": b"json"}
_TRACE = {"traceparent": b"00-x"}


def _msg(offset: int, value=b"x", headers=None, partition: int = 0) -> Message:
    return Message(_T, partition, offset, None, value, headers if headers is not None else {}, None, ())


def _avro(i: int) -> bytes:
    return codec.encode(codec.Schema.USAGE_EVENT, {
        "event_id": f"e-{i}", "tenant_id": "t", "subscription_id": f"s-{i % 3}", "metric_code": "api_calls",
        "quantity": str(i), "occurred_at_us": 1_764_000_000_000_000 + i, "properties": {}})


def _by_identity(batch: list[Message]) -> list[dict]:
    return list({id(m.headers): m.headers for m in batch}.values())


@pytest.mark.parametrize("headers", [
    [_A] * 5, [_A, _A, {}, _A, {}], [{}, _A, _A], [_A, _B, _TRACE, _A], [_A, dict(_A), _A], [_A, {}, _TRACE],
])
def test_distinct_headers_holds_every_header_set_of_the_batch(headers):
    batch = [_msg(i, headers=h) for i, h in enumerate(headers)]
    got = list(distinct_headers(batch))
    assert all(any(g == h for g in got) for h in headers)  # each message's headers are there
    assert len(got) <= len(_by_identity(batch))
    assert any("traceparent" in h for h in got) == any("traceparent" in h for h in headers)


def test_distinct_headers_of_an_empty_batch():
    assert list(distinct_headers([])) == []


def test_dead_flags_by_identity_and_by_coordinates():
    batch = [_msg(i) for i in range(6)]
    assert dead_flags(batch, [DeadLetter(batch[1], "r"), DeadLetter(batch[4], "r")]) == \
        [False, True, False, False, True, False]
    # The same message dead-lettered twice is one flag.
    assert dead_flags(batch, [DeadLetter(batch[2], "r"), DeadLetter(batch[2], "s")]).count(True) == 1
    # An equal message that is not the batch's own object: found by (topic, partition, offset).
    assert dead_flags(batch, [DeadLetter(_msg(3), "r")]) == [False, False, False, True, False, False]
    with pytest.raises(ValueError, match="not in the batch"):
        dead_flags(batch, [DeadLetter(_msg(99), "r")])


def _one_by_one(batch: list[Message]):
    """decode_batch on each message alone, positions mapped back to the batch."""
    events, positions, dead = [], [], []
    for i, m in enumerate(batch):
        e, _, d = decode_batch([m])
        events += e
        positions += [i] * len(e)
        dead += [(x.message.offset, x.reason) for x in d]
    return events, positions, dead


def test_a_batch_of_hand_read_records_mixed_with_every_other_kind_reads_as_each_alone():
    ce = json.dumps({"specversion": "1.0", "id": "ce-1", "time": "2025-11-24T00:00:00Z", "tenantid": "t",
                     "subject": "s-1", "data": {"metric": "api_calls", "quantity": 2}}).encode()
    confluent = codec.CONFLUENT_MAGIC + b"\x00\x00\x00\x07" + b"\x00"
    with_props = codec.encode(codec.Schema.USAGE_EVENT, {
        "event_id": "p", "tenant_id": "t", "subscription_id": "s", "metric_code": "m", "quantity": "1",
        "occurred_at_us": 5, "properties": {"k": "v"}})
    values = [_avro(0), _avro(1), b"\x00" + bytes(31), _avro(2), ce, with_props, None, _avro(3),
              bytearray(_avro(4)), confluent, b'{"specversion": "0.3"}', _avro(5) + b"junk", b"", _avro(6)]
    batch = [_msg(i, v) for i, v in enumerate(values)]
    events, positions, dead = decode_batch(batch)
    want_events, want_positions, want_dead = _one_by_one(batch)
    assert [tuple(e) for e in events] == [tuple(e) for e in want_events]
    assert positions == want_positions
    assert [(d.message.offset, d.reason) for d in dead] == want_dead
    assert [d.message.offset for d in dead] == sorted(d.message.offset for d in dead)  # batch order
    assert all(batch[p].value is not None for p in positions)


def test_a_batch_every_record_of_which_is_read_by_hand():
    batch = [_msg(i, _avro(i)) for i in range(50)]
    events, positions, dead = decode_batch(batch)
    assert positions == list(range(50)) and dead == []
    assert [as_event(e).event_id for e in events] == [f"e-{i}" for i in range(50)]


def test_a_batch_with_a_codec_error_is_freed_without_the_cycle_collector():
    """A codec error kept with its traceback would tie the whole batch into a reference
    cycle (frames down from decode_batch): the batch would wait for the cyclic collector."""
    confluent = codec.CONFLUENT_MAGIC + b"\x00\x00\x00\x07" + b"\x00"
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        batch = [_msg(i, _avro(i)) for i in range(20)] + [_msg(20, confluent), _msg(21, b"\x00" + bytes(31))]
        events, positions, dead = decode_batch(batch)
        assert [d.message.offset for d in dead] == [20, 21]
        del batch, events, positions, dead
        gc.collect()
        assert not [o for o in gc.garbage if isinstance(o, Message)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_detach_reads_a_fetch_as_from_kafka_reads_each_message():
    from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, KafkaError
    from confluent_kafka import Message as KafkaMessage

    from consumers.strategy import detach

    a, b = [("content-type", b"avro")], [("content-type", b"json"), ("x", None), ("content-type", b"json2")]
    specs = [(0, a), (0, a), (0, None), (0, []), (0, b), (0, list(b)), (1, a), (2, a), (1, a), (0, None), (0, a)]
    fetched = [KafkaMessage(topic=_T, partition=p, offset=i, key=b"k%d" % i, value=b"v%d" % i, headers=h,
                            timestamp=(TIMESTAMP_NOT_AVAILABLE if i == 3 else TIMESTAMP_CREATE_TIME, 1000 + i))
               for i, (p, h) in enumerate(specs)]
    eof = KafkaMessage(topic=_T, partition=0, offset=99, error=KafkaError(KafkaError._PARTITION_EOF))
    fetched.insert(5, eof)
    errors = []

    def other(msg):
        errors.append(msg)
        return _msg(99, b"placeholder")

    assigned = {(_T, 0), (_T, 1)}  # partition 2 was revoked: its message is dropped
    got = detach(fetched, assigned, other)
    want = [Message.from_kafka(m) for m in fetched if m.error() is None and m.partition() in (0, 1)]
    want.insert(5, _msg(99, b"placeholder"))
    assert got == want and errors == [eof]
    assert [m.header_list for m in got[:6]] == [tuple(a), tuple(a), (), (), tuple(b), ()]
    assert got[4].headers == {"content-type": b"json2"} and got[3].timestamp_ms is None
    assert got[0].headers is got[1].headers  # shared, as from_kafka shares them

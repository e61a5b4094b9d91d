"""bench/peer's messages for Kafka Connect: the usage topic's messages, transcoded one for one
into JSON with an embedded schema (Connect's own JsonConverter, `schemas.enable=true`) on a
topic of their own, same key, same partition, same order.

JSON with schema is the cheapest format Connect reads without more servers: Avro would need a
Confluent-compatible registry and Confluent's AvroConverter, which is not on Maven Central,
and our messages are single-object Avro (fingerprint framing), which no converter on Central
reads. What a message says is the same: the Avro record's fields (properties aside, empty
here), `occurred_at` as Connect's Timestamp (milliseconds). Messages that are not Avro (the
bench's random-bytes share) are copied as they are: Connect's converter fails on them and the
connector, with `errors.tolerance=all`, skips them, as ours dead-letters them."""
from __future__ import annotations

import json

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from billing import codec

_SCHEMA = json.dumps({
    "type": "struct", "name": "billing.v1.UsageEvent", "optional": False, "fields": [
        {"field": "event_id", "type": "string", "optional": False},
        {"field": "tenant_id", "type": "string", "optional": False},
        {"field": "subscription_id", "type": "string", "optional": False},
        {"field": "metric_code", "type": "string", "optional": False},
        {"field": "quantity", "type": "string", "optional": False},
        {"field": "occurred_at", "type": "int64", "optional": False, "name": "org.apache.kafka.connect.data.Timestamp",
         "version": 1},
    ]}, separators=(",", ":"))

# The table the connector writes (raw rows, upsert by event id), created by the bench so
# the types are the natural ones; the sink's `stringtype=unspecified` lets PostgreSQL take
# the quantity's text as numeric.
RAW_TABLE = "peer_usage_raw"
CREATE_RAW_TABLE = f"""create table if not exists {RAW_TABLE} (
    event_id text primary key, tenant_id text not null, subscription_id text not null, metric_code text not null,
    quantity numeric not null, occurred_at timestamp not null)"""


def to_json(value: bytes) -> tuple[bytes, str | None]:
    """(the JSON message, its event id), or (the value as it is, None) when it is not a
    decodable usage event."""
    try:
        schema, rec = codec.decode_any(value)
    except codec.CodecError:
        return value, None
    if schema is not codec.Schema.USAGE_EVENT:
        return value, None
    payload = json.dumps({"event_id": rec["event_id"], "tenant_id": rec["tenant_id"],
                          "subscription_id": rec["subscription_id"], "metric_code": rec["metric_code"],
                          "quantity": rec["quantity"], "occurred_at": int(rec["occurred_at_us"]) // 1000},
                         separators=(",", ":"))
    return f'{{"schema":{_SCHEMA},"payload":{payload}}}'.encode(), rec["event_id"]


def transcode(bootstrap: str, source: str, target: str, marks: dict[int, int]) -> int:
    """Copy every message of `source` (up to its high watermarks `marks`) to `target` (made
    with as many partitions) as JSON with schema; return the number of distinct event ids
    (the rows the connector must end with)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(target, num_partitions=len(marks), replication_factor=1)]).values():
        fut.result()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-peer-transcode",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(source, p, 0) for p in marks])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 500000, "compression.type": "none"})
    ids: set[str] = set()
    left = {p: hw for p, hw in marks.items() if hw > 0}
    try:
        while left:
            for msg in consumer.consume(10000, timeout=1.0):
                if msg.error():
                    continue
                p = msg.partition()
                if p not in left:
                    continue
                value, event_id = to_json(msg.value())
                if event_id is not None:
                    ids.add(event_id)
                while True:
                    try:
                        producer.produce(target, value, key=msg.key(), partition=p)
                        break
                    except BufferError:
                        producer.poll(0.1)
                if msg.offset() + 1 >= left[p]:
                    del left[p]
            producer.poll(0)
        if producer.flush(120) != 0:
            raise RuntimeError("the peer's messages were not all acknowledged")
    finally:
        consumer.close()
    return len(ids)


class CommittedOffsets:
    """The offsets a consumer group has committed on a topic (Connect's sink tasks commit
    what they wrote), read through one client kept open."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: list[int]):
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._tps = [TopicPartition(topic, p) for p in partitions]

    def read(self) -> dict[int, int]:
        return {tp.partition: max(tp.offset, 0) for tp in self._consumer.committed(self._tps, timeout=10)}

    def close(self) -> None:
        self._consumer.close()

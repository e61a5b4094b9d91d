"""Through the real broker: an Avro message produced with our codec is consumed back intact."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer

from billing import codec
from billing.kafka import consumer_config, ensure_topics, producer_config


def test_topics_created_once(migrated):
    first = ensure_topics(migrated)
    assert set(first) <= set(migrated.topics.all())
    assert ensure_topics(migrated) == []


def test_usage_event_round_trip_through_broker(migrated):
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"  # its own topic: other tests write to the usage topic
    admin = AdminClient({"bootstrap.servers": migrated.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    events = [
        {"event_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4()), "subscription_id": "sub-1",
         "metric_code": "api_calls", "quantity": str(i) + ".5", "occurred_at_us": 1_700_000_000_000_000 + i,
         "properties": {"region": "eu"}}
        for i in range(20)
    ]
    producer = Producer(producer_config(migrated))
    for e in events:
        producer.produce(topic, key=e["subscription_id"], value=codec.encode(codec.Schema.USAGE_EVENT, e),
                         headers={"content-type": codec.content_type(codec.Schema.USAGE_EVENT)})
    assert producer.flush(30) == 0

    consumer = Consumer(consumer_config(migrated, f"test-{uuid.uuid4()}"))
    consumer.subscribe([topic])
    wanted = {e["event_id"] for e in events}
    got = {}
    deadline = time.monotonic() + 60
    try:
        while wanted - set(got) and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=1.0):
                assert msg.error() is None
                decoded = codec.decode(codec.Schema.USAGE_EVENT, msg.value())
                got[decoded["event_id"]] = decoded
                assert dict(msg.headers())["content-type"].decode().endswith("UsageEvent")
    finally:
        consumer.close()
    assert wanted <= set(got)
    for e in events:
        assert got[e["event_id"]] == e

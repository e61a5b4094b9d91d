"""Usage producers through the real broker: the UsageProducer client, the load generator
(library and `billing produce-usage`), and kcat producing CloudEvents JSON, all read back
and decoded with consumers.usage_payloads.decode_batch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from billing.services.usage import UsageEvent, to_us
from billing.services.usage_ingest import as_event
from consumers.runner import Message
from consumers.usage_payloads import decode_batch as decode_messages
from producers.load import produce_load
from producers.usage_client import DeliveryError, UsageProducer
from tests.conftest import PROJECT_ROOT
from tests.kafka_helpers import TopicReader

pytestmark = pytest.mark.integration


def decode_batch(messages: list[Message]) -> tuple[list[UsageEvent], list[int], list]:
    """The consumer's decoding, its events as `UsageEvent`s (the hand Avro reader gives
    plain tuples in that order)."""
    events, positions, dead = decode_messages(messages)
    return [as_event(e) for e in events], positions, dead


TENANT = "6f1c2a0e-3b7d-4c55-9a8e-2f4d1c0b9e77"
SUBS = ["0b7d3c1e-6b55-4c4e-9c3e-3f9d2a1b7c11", "1c8e4d2f-7c66-4d5f-8d4f-4a0e3b2c8d22",
        "2d9f5e3a-8d77-4e6a-9e5a-5b1f4c3d9e33"]


def new_topic(settings, partitions: int = 3) -> str:
    topic = f"test.usage.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                      operation_timeout=30).values():
        future.result(30)
    return topic


def read_back(settings, topic: str, n: int) -> list[Message]:
    reader = TopicReader(settings, topic)
    try:
        raw = reader.until(lambda ms: len(ms) >= n)
    finally:
        reader.close()
    assert len(raw) == n
    return [Message.from_kafka(m) for m in raw]


# ------------------------------------------------------------------ UsageProducer


def test_usage_producer_round_trip(migrated):
    topic = new_topic(migrated)
    t = datetime(2025, 11, 24, 18, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=2)))
    with UsageProducer(migrated, topic=topic, linger_ms=5) as usage:
        usage.send("evt-1", TENANT, SUBS[0], "api_calls", "12.5", t)
        usage.send("evt-2", uuid.UUID(TENANT), uuid.UUID(SUBS[1]), "api_calls", Decimal("0.0025"),
                   to_us(t) + 1, {"region": "eu"})
        usage.send("evt-3", TENANT.upper(), SUBS[2], "storage_gb", Decimal("1E+3"), to_us(t) + 2)
        usage.send("evt-4", TENANT, SUBS[0], "api_calls", 7, to_us(t) + 3)
        assert usage.flush(30) == []
        assert usage.delivered == usage.sent == 4 and usage.pending == 0
    messages = read_back(migrated, topic, 4)
    events, positions, dead = decode_batch(messages)
    assert dead == [] and len(events) == 4
    got = {e.event_id: e for e in events}
    us = to_us(t)
    assert got == {
        "evt-1": UsageEvent("evt-1", TENANT, SUBS[0], "api_calls", "12.5", us, None),
        "evt-2": UsageEvent("evt-2", TENANT, SUBS[1], "api_calls", "0.0025", us + 1, {"region": "eu"}),
        "evt-3": UsageEvent("evt-3", TENANT, SUBS[2], "storage_gb", "1000", us + 2, None),
        "evt-4": UsageEvent("evt-4", TENANT, SUBS[0], "api_calls", "7", us + 3, None),
    }
    for k, p in enumerate(positions):
        assert messages[p].key == events[k].subscription_id.encode()
        assert messages[p].headers["content-type"] == b"application/vnd.apache.avro+binary; schema=billing.v1.UsageEvent"


@pytest.mark.parametrize("kwargs, message", [
    ({"quantity": "-1"}, "negative"),
    ({"quantity": Decimal("-0.5")}, "negative"),
    ({"quantity": "1e3"}, "non-negative decimal"),
    ({"quantity": "abc"}, "non-negative decimal"),
    ({"quantity": 1.5}, "never a float"),
    ({"quantity": Decimal("NaN")}, "finite"),
    ({"occurred_at": datetime(2025, 11, 24, 16, 0)}, "timezone-aware"),
    ({"occurred_at": "2025-11-24T16:00:00Z"}, "aware datetime or microseconds"),
    ({"event_id": ""}, "event_id"),
    ({"event_id": "x" * 201}, "event_id"),
    ({"tenant_id": "acme"}, "tenant_id must be a UUID"),
    ({"subscription_id": "sub-1"}, "subscription_id must be a UUID"),
    ({"metric_code": ""}, "metric_code"),
    ({"properties": {"region": 5}}, "strings to strings"),
    ({"properties": {f"k{i}": "v" for i in range(51)}}, "at most 50"),
])
def test_usage_producer_refuses_bad_input(migrated, kwargs, message):
    args = {"event_id": "evt-1", "tenant_id": TENANT, "subscription_id": SUBS[0], "metric_code": "api_calls",
            "quantity": "1", "occurred_at": datetime.now(timezone.utc)}
    args.update(kwargs)
    usage = UsageProducer(migrated, topic="never-created")
    with pytest.raises(ValueError, match=message):
        usage.send(**args)
    assert usage.sent == 0 and usage.flush(5) == []


def test_delivery_failures_are_returned_and_raised(migrated):
    # The broker does not auto-create topics: delivery fails once message.timeout.ms passes.
    usage = UsageProducer(migrated, topic=f"test.usage.missing.{uuid.uuid4().hex[:8]}",
                          **{"message.timeout.ms": 1500})
    usage.send("evt-lost", TENANT, SUBS[0], "api_calls", "1", 1_764_000_000_000_000)
    failures = usage.flush(30)
    assert len(failures) == 1 and failures[0].event_id == "evt-lost" and failures[0].key == SUBS[0].encode()
    assert usage.errors == failures and usage.delivered == 0
    assert usage.flush(5) == []  # reported once

    with pytest.raises(DeliveryError, match="evt-lost"):
        with UsageProducer(migrated, topic=f"test.usage.missing.{uuid.uuid4().hex[:8]}",
                           **{"message.timeout.ms": 1500}) as usage:
            usage.send("evt-lost", TENANT, SUBS[0], "api_calls", "1", 1_764_000_000_000_000)


# ------------------------------------------------------------------ the load generator


def check_load(messages: list[Message], summary: dict) -> None:
    """The messages on the topic match the summary's counts."""
    events, positions, dead = decode_batch(messages)
    assert {d.reason for d in dead} <= {"undecodable"}
    negative = [e for e in events if e.quantity.startswith("-")]
    good = [e for e in events if not e.quantity.startswith("-")]
    ids = {e.event_id for e in good}
    assert len(dead) + len(negative) == summary["bad"]
    assert len(ids) == summary["unique"]
    assert len(good) - len(ids) == summary["duplicates"]
    assert len({e.event_id for e in negative}) == len(negative)  # bad events are never repeated
    assert not ids & {e.event_id for e in negative}
    # CloudEvents: the originals (unique and negative) sent as JSON
    json_ids = {events[k].event_id for k, p in enumerate(positions) if messages[p].value.startswith(b"{")}
    assert len(json_ids) == summary["cloudevents"]
    for k, p in enumerate(positions):
        e, m = events[k], messages[p]
        assert e.tenant_id == TENANT and e.metric_code == "api_calls" and e.subscription_id in SUBS
        assert m.key == e.subscription_id.encode()
        assert e.event_id.startswith(summary["run_id"] + "-")
        # occurred_at = start + n microseconds, n the message's number in the run
        assert e.occurred_at_us - int(e.event_id.rsplit("-", 1)[1]) == events[0].occurred_at_us - int(
            events[0].event_id.rsplit("-", 1)[1])


def test_produce_load_round_trip(migrated, capsys):
    topic = new_topic(migrated)
    summary = produce_load(migrated, count=3000, tenant_id=TENANT, subscription_ids=SUBS, metric="api_calls",
                           duplicates=0.2, bad=0.05, cloudevents=0.3, rate=0, seed=7, progress=True, topic=topic)
    assert summary["produced"] == 3000 and summary["failed"] == 0
    assert (summary["unique"], summary["duplicates"], summary["bad"]) == (2250, 600, 150)
    assert 600 < summary["cloudevents"] < 1200 and summary["seconds"] > 0
    assert "3,000/3,000" in capsys.readouterr().err
    check_load(read_back(migrated, topic, 3000), summary)


def test_produce_load_random_uuid_ids(migrated):
    topic = new_topic(migrated)
    summary = produce_load(migrated, count=400, tenant_id=TENANT, subscription_ids=SUBS, metric="api_calls",
                           duplicates=0.1, bad=0, cloudevents=0.5, rate=0, seed=3, progress=False, topic=topic,
                           ids="uuid4")
    events, _, dead = decode_batch(read_back(migrated, topic, 400))
    assert not dead and len(events) == 400
    ids = [e.event_id for e in events]
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    assert len(set(ids)) == summary["unique"] == 360  # the duplicates repeat an earlier id


def test_produce_load_rate_limit(migrated):
    topic = new_topic(migrated, partitions=1)
    summary = produce_load(migrated, count=300, tenant_id=TENANT, subscription_ids=SUBS[:1], metric="api_calls",
                           duplicates=0, bad=0, cloudevents=0, rate=500, seed=1, progress=False, topic=topic)
    assert summary["seconds"] >= 0.5
    assert (summary["unique"], summary["duplicates"], summary["bad"]) == (300, 0, 0)


def test_produce_load_refuses_bad_shares(migrated):
    for kw in ({"duplicates": 1.5}, {"bad": -0.1}, {"duplicates": 0.6, "bad": 0.6}, {"rate": -1}, {"ids": "uuid7"}):
        args = dict(count=10, tenant_id=TENANT, subscription_ids=SUBS, metric="api_calls", duplicates=0.0,
                    bad=0.0, cloudevents=0.0, rate=0, seed=1, progress=False, topic="never-created")
        args.update(kw)
        with pytest.raises(ValueError):
            produce_load(migrated, **args)


def test_billing_produce_usage_command(migrated, tmp_path):
    topic = new_topic(migrated)
    subs_file = tmp_path / "subs.txt"
    subs_file.write_text("\n".join(SUBS) + "\n")
    env = {**os.environ, "BILLING_KAFKA_BOOTSTRAP_SERVERS": migrated.kafka_bootstrap_servers}
    proc = subprocess.run(
        [sys.executable, "-m", "billing.cli", "produce-usage", "--count", "1000", "--tenant-id", TENANT,
         "--subscriptions-file", str(subs_file), "--duplicates", "0.1", "--bad", "0.02", "--cloudevents", "0.5",
         "--seed", "3", "--topic", topic],
        cwd=PROJECT_ROOT, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert (summary["produced"], summary["unique"], summary["duplicates"], summary["bad"]) == (1000, 880, 100, 20)
    assert b"\rproduce-usage" in proc.stderr and b"1,000/1,000" in proc.stderr  # one line, rewritten
    check_load(read_back(migrated, topic, 1000), summary)


# ------------------------------------------------------------------ kcat (Debian package kcat)


def test_kcat_cloudevents_lines_decode(migrated):
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed: it comes from Debian's package 'kcat' "
                    "(apt-get install -y kcat); the Makefile/CI install step must install it")
    topic = new_topic(migrated)
    t0 = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z
    lines = [
        (SUBS[0], {"specversion": "1.0", "id": "kc-1", "source": "/kcat", "type": "com.example.usage",
                   "time": "2025-11-24T16:00:00Z", "subject": SUBS[0], "tenantid": TENANT,
                   "data": {"metric": "api_calls", "quantity": 12.5}}),
        (SUBS[1], {"specversion": "1.0", "id": "kc-2", "source": "/kcat", "type": "com.example.usage",
                   "time": "2025-11-24T18:00:00.000001+02:00", "subject": SUBS[1], "tenantid": TENANT,
                   "datacontenttype": "application/json",
                   "data": {"metric_code": "api_calls", "quantity": "0.1", "properties": {"region": "eu"}}}),
        (SUBS[2], {"specversion": "1.0", "id": "kc-3", "source": "/kcat", "type": "com.example.usage",
                   "time": "2025-11-24T16:00:00.123456789Z",
                   "data": {"metric": "api_calls", "quantity": 3, "tenant_id": TENANT,
                            "subscription_id": SUBS[2]}}),
        (SUBS[0], {"specversion": "1.0", "id": "kc-4", "source": "/kcat", "type": "com.example.usage",
                   "subject": SUBS[0], "tenantid": TENANT, "data": {"metric": "api_calls", "quantity": 1}}),
    ]
    # json.dumps keeps 12.5 / 3 / 1 as written; the float 0.1 would not matter either
    text = "".join(f"{key}:{json.dumps(ce, separators=(',', ':'))}\n" for key, ce in lines)
    text += f"{SUBS[1]}:not json at all\n"
    proc = subprocess.run(
        [kcat, "-P", "-b", migrated.kafka_bootstrap_servers, "-t", topic, "-K:",
         "-H", "content-type=application/cloudevents+json"],
        input=text.encode(), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    messages = read_back(migrated, topic, 5)
    events, positions, dead = decode_batch(messages)
    by_id = {e.event_id: e for e in events}
    assert by_id == {
        "kc-1": UsageEvent("kc-1", TENANT, SUBS[0], "api_calls", "12.5", t0, None),
        "kc-2": UsageEvent("kc-2", TENANT, SUBS[1], "api_calls", "0.1", t0 + 1, {"region": "eu"}),
        "kc-3": UsageEvent("kc-3", TENANT, SUBS[2], "api_calls", "3", t0 + 123_456, None),
    }
    for k, p in enumerate(positions):
        assert messages[p].key == events[k].subscription_id.encode()
        assert messages[p].headers["content-type"] == b"application/cloudevents+json"
    assert sorted((d.reason, d.detail.split(":")[0]) for d in dead) == [
        ("invalid_cloudevent", "time"), ("undecodable", "not valid JSON")]

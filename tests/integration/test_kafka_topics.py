"""`billing topics` and the start-up check against the one-broker stack: topics are created
with the replication settings, existing topics below them are reported, and the service
refuses to start on them unless told to accept them."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from billing.config import Settings, Topics
from billing.kafka import admin_config
from billing.kafka_topics import UnderReplicatedTopics, _wait_visible, check_at_start, check_existing, sync


def _topics() -> Topics:
    """Topic names of their own, so these tests never touch the shared service topics."""
    tag = uuid.uuid4().hex[:8]
    return Topics(**{key: f"test.topics.{tag}.{key}" for key in Topics.model_fields})


def _with(settings: Settings, topics: Topics, **kw) -> Settings:
    return settings.model_copy(update={"topics": topics, **kw})


def _describe(settings: Settings, name: str) -> tuple[int, int, int]:
    """(partitions, replication factor, min.insync.replicas) as the broker says."""
    admin = AdminClient(admin_config(settings))
    topic = admin.list_topics(name, timeout=10).topics[name]
    configs = admin.describe_configs([ConfigResource("topic", name)])
    (future,) = configs.values()
    min_isr = int(future.result(10)["min.insync.replicas"].value)
    return len(topic.partitions), min(len(p.replicas) for p in topic.partitions.values()), min_isr


def test_topics_are_created_with_the_settings_then_found_fine(settings):
    topics = _topics()
    s = _with(settings, topics, kafka_topic_config={"usage": {"partitions": 3, "retention.ms": "3600000"}})
    report = sync(s)
    assert report.ok, report.as_dict()
    assert sorted(report.created) == sorted(topics.all())
    assert _describe(s, topics.usage) == (3, 1, 1)
    assert _describe(s, topics.invoice_requests) == (s.kafka_partitions, 1, 1)
    admin = AdminClient(admin_config(s))
    (future,) = admin.describe_configs([ConfigResource("topic", topics.usage)]).values()
    assert future.result(10)["retention.ms"].value == "3600000"
    again = sync(s)
    assert again.ok and again.created == []


def test_topics_below_the_settings_are_reported(settings):
    topics = _topics()
    one = _with(settings, topics)  # the local stack's 1 / 1
    assert sync(one).ok
    strict = _with(settings, topics, kafka_replication_factor=3, kafka_min_insync_replicas=2)
    problems = check_existing(strict)
    for name in topics.all():
        assert f"{name}: replication factor 1 < 3 wanted (BILLING_KAFKA_REPLICATION_FACTOR)" in problems
        assert f"{name}: min.insync.replicas 1 < 2 wanted (BILLING_KAFKA_MIN_INSYNC_REPLICAS)" in problems
    assert len(problems) == 2 * len(topics.all())


def test_min_insync_replicas_read_from_the_topic_config(settings):
    """A topic at min.insync.replicas 2 is not reported for it (only for its replication
    factor), one at 1 is: the value comes from describe_configs, not from a default."""
    topics = _topics()
    admin = AdminClient(admin_config(settings))
    futures = admin.create_topics([
        NewTopic(topics.usage, 1, 1, config={"min.insync.replicas": "2"}),
        NewTopic(topics.usage_dlq, 1, 1, config={"min.insync.replicas": "1"}),
    ])
    for f in futures.values():
        f.result(30)
    _wait_visible(admin, [topics.usage, topics.usage_dlq], 30)
    strict = _with(settings, topics, kafka_replication_factor=2, kafka_min_insync_replicas=2)
    problems = check_existing(strict)
    assert f"{topics.usage}: replication factor 1 < 2 wanted (BILLING_KAFKA_REPLICATION_FACTOR)" in problems
    assert not any(p.startswith(f"{topics.usage}: min.insync.replicas") for p in problems)
    assert f"{topics.usage_dlq}: min.insync.replicas 1 < 2 wanted (BILLING_KAFKA_MIN_INSYNC_REPLICAS)" in problems
    assert f"{topics.invoice_requests}: missing" in problems


def _cli_env(settings: Settings, topics: Topics, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update({"BILLING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, **extra})
    env.update({f"BILLING_TOPIC_{key.upper()}": name for key, name in topics.model_dump().items()})
    return env


def _billing_topics(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "billing.cli", "topics"], env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_reports_a_replication_factor_the_cluster_cannot_give(settings):
    topics = _topics()
    proc = _billing_topics(_cli_env(settings, topics))  # defaults: replication factor 3, one broker
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"topic {topics.usage} not created: INVALID_REPLICATION_FACTOR" in proc.stderr
    assert "replication factor of 3" in proc.stderr and "1 broker" in proc.stderr
    assert AdminClient(admin_config(settings)).list_topics(timeout=10).topics.get(topics.usage) is None


def test_cli_creates_and_then_reports_under_replicated_topics(settings):
    topics = _topics()
    ok = _billing_topics(_cli_env(settings, topics, BILLING_KAFKA_REPLICATION_FACTOR="1",
                                  BILLING_KAFKA_MIN_INSYNC_REPLICAS="1"))
    assert ok.returncode == 0, ok.stderr
    assert f'"{topics.usage}"' in ok.stdout
    below = _billing_topics(_cli_env(settings, topics, BILLING_KAFKA_REPLICATION_FACTOR="1",
                                     BILLING_KAFKA_MIN_INSYNC_REPLICAS="1",
                                     BILLING_KAFKA_TOPIC_CONFIG='{"usage": {"replication.factor": 2}}'))
    assert below.returncode == 1
    assert f"topic {topics.usage}: replication factor 1 < 2 wanted" in below.stderr
    assert below.stderr.count("replication factor") == 1


async def test_service_refuses_to_start_on_under_replicated_topics(settings, caplog):
    from billing.runtime import Service

    topics = _topics()
    assert sync(_with(settings, topics)).ok
    strict = _with(settings, topics, kafka_replication_factor=3, kafka_min_insync_replicas=2)
    service = Service(strict, roles=("usage",))
    with pytest.raises(UnderReplicatedTopics, match=rf"refusing to start: {topics.usage}: replication factor 1 < 3"):
        await service.start()
    assert service.db is None  # refused before connecting anything
    # Told to accept them: a warning naming the problems, no refusal.
    with caplog.at_level(logging.WARNING, logger="billing.kafka_topics"):
        check_at_start(strict.model_copy(update={"kafka_accept_under_replicated": True}))
    (record,) = [r for r in caplog.records if r.name == "billing.kafka_topics"]
    assert "accepted" in record.getMessage() and any(topics.usage in p for p in record.problems)

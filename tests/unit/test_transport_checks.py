"""Start-up warnings for what travels in clear, and the partition-leader readiness decision."""
from __future__ import annotations

import pytest
from confluent_kafka.admin import PartitionMetadata, TopicMetadata

from billing.config import Settings
from billing.ops.readiness import leader_check
from billing.ops.transport_checks import database_warnings, grpc_warning, is_local, sslmode, url_hosts


@pytest.mark.parametrize("url, hosts", [
    ("postgresql://u:p@db.example.com:5432/billing", ["db.example.com"]),
    ("postgresql://u:p@127.0.0.1/billing", ["127.0.0.1"]),
    ("postgresql://u:p@[::1]:5432/billing", ["::1"]),
    ("postgresql://u:p@h1:5432,h2:5433/billing", ["h1", "h2"]),
    ("postgresql:///billing?host=/var/run/postgresql", ["/var/run/postgresql"]),
    ("postgresql://u@/billing", []),
    ("postgresql://u:p%40ss@db.internal/billing", ["db.internal"]),
])
def test_url_hosts(url, hosts):
    assert url_hosts(url) == hosts


@pytest.mark.parametrize("host, local", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("/tmp", True), ("", True),
    ("10.0.0.5", False), ("db.example.com", False), ("localhost.example.com", False),
])
def test_is_local(host, local):
    assert is_local(host) is local


def test_sslmode_from_url_else_environment_else_prefer(monkeypatch):
    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert sslmode("postgresql://h/db") == "prefer"
    assert sslmode("postgresql://h/db?sslmode=verify-full") == "verify-full"
    monkeypatch.setenv("PGSSLMODE", "require")
    assert sslmode("postgresql://h/db") == "require"
    assert sslmode("postgresql://h/db?sslmode=disable") == "disable"


def test_a_remote_database_without_verify_full_is_warned_naming_the_setting_never_the_password(monkeypatch):
    monkeypatch.delenv("PGSSLMODE", raising=False)
    settings = Settings(
        database_url="postgresql://app:s3cret-app@db.example.com/billing?sslmode=require",
        admin_database_url="postgresql://owner:s3cret-owner@db.example.com/billing?sslmode=verify-full",
    )
    warnings = database_warnings(settings)
    assert len(warnings) == 1
    assert warnings[0].startswith("database_url: host db.example.com is not local and sslmode is require")
    assert "s3cret" not in warnings[0] and "verify-full" in warnings[0]
    # the local defaults: nothing to say
    assert database_warnings(Settings()) == []
    remote_default = Settings(database_url="postgresql://app:x@10.1.2.3/billing")
    assert [w.split(":")[0] for w in database_warnings(remote_default)] == ["database_url"]


def test_plaintext_grpc_is_warned():
    assert "is plaintext" in grpc_warning("plaintext", "0.0.0.0:50051")
    assert grpc_warning("tls", "0.0.0.0:50051") is None and grpc_warning("mtls", "x") is None


def _topic(name: str, leaders: dict[int, int]) -> TopicMetadata:
    topic = TopicMetadata()
    topic.topic = name
    for pid, leader in leaders.items():
        part = PartitionMetadata()
        part.id, part.leader = pid, leader
        topic.partitions[pid] = part
    return topic


def test_assigned_partitions_without_a_leader_are_named():
    topics = {"usage": _topic("usage", {0: 1, 1: -1, 2: 1, 3: -1}), "cmds": _topic("cmds", {0: -1, 1: 2})}
    assert leader_check(topics, set()) == "ok"
    assert leader_check(topics, {("usage", 0), ("usage", 2), ("cmds", 1)}) == "ok"
    # only the assigned ones count: usage 1 has no leader but belongs to another process
    assert leader_check(topics, {("usage", 3), ("usage", 0), ("cmds", 0)}) == \
        "no leader for cmds partitions 0; usage partitions 3"
    # a partition or topic the metadata does not know has no leader either
    assert leader_check(topics, {("usage", 9), ("gone", 0)}) == \
        "no leader for gone partitions 0; usage partitions 9"

"""Kafka client settings: user properties merged into every client, file: secrets, the
properties the service refuses, topic settings, and unknown BILLING_* variables."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from pydantic import ValidationError

from billing.config import Settings, unknown_env, warn_unknown_env
from billing.kafka import admin_config, client_config, consumer_config, producer_config
from billing.kafka_properties import parse_properties
from billing.kafka_topics import topic_specs


def _settings(**kw) -> Settings:
    return Settings(kafka_replication_factor=1, kafka_min_insync_replicas=1, **kw)


def test_json_and_file_properties_reach_every_client_with_json_winning(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    props = tmp_path / "client.properties"
    props.write_text(
        "# a comment\n"
        "security.protocol = SASL_SSL\n"
        "sasl.mechanism: SCRAM-SHA-512\n"
        "sasl.username billing\n"
        f"sasl.password=file:{secret}\n"
        "client.id=from-file\n"
        "ssl.ca.location=/etc/ssl/ca\\\n"
        "  .pem\n"
    )
    s = _settings(kafka_config_file=props, kafka_config={"client.id": "from-json", "socket.timeout.ms": 5000})
    expected = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "billing",
                "sasl.password": "s3cret-from-file", "client.id": "from-json", "socket.timeout.ms": "5000",
                "ssl.ca.location": "/etc/ssl/ca.pem"}
    for config in (client_config(s), producer_config(s), consumer_config(s, "g"), admin_config(s)):
        assert {k: config[k] for k in expected} == expected
        assert config["bootstrap.servers"] == s.kafka_bootstrap_servers
    # The secret is read when a client is configured, never kept in the settings.
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()


def test_properties_file_syntax():
    text = "a=1\n! bang comment\nb : two words \nc\\=d=3\ne=\\u00e9\\t\nempty\n"
    assert parse_properties(text) == {"a": "1", "b": "two words ", "c=d": "3", "e": "\u00e9\t", "empty": ""}


def test_env_json_is_parsed(monkeypatch):
    monkeypatch.setenv("BILLING_KAFKA_CONFIG", json.dumps({"security.protocol": "SSL", "enable.ssl.certificate.verification": True}))
    s = Settings(kafka_replication_factor=1, kafka_min_insync_replicas=1)
    assert s.kafka_config == {"security.protocol": "SSL", "enable.ssl.certificate.verification": "true"}
    assert producer_config(s)["security.protocol"] == "SSL"


def test_json_text_as_a_keyword_is_parsed_like_the_environment():
    s = _settings(kafka_config=json.dumps({"security.protocol": "SSL", "socket.timeout.ms": 5000}))
    assert s.kafka_config == {"security.protocol": "SSL", "socket.timeout.ms": "5000"}
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(ValidationError, match="BILLING_KAFKA_CONFIG is not a JSON object"):
            _settings(kafka_config=bad)


@pytest.mark.parametrize("key,value,needed", [
    ("enable.idempotence", False, "enable.idempotence=true"),
    ("acks", "1", "acks=all"),
    ("enable.auto.commit", "true", "enable.auto.commit=false"),
    ("isolation.level", "read_uncommitted", "isolation.level=read_committed"),
])
def test_guarantees_are_not_overridable(key, value, needed):
    with pytest.raises(ValidationError) as info:
        _settings(kafka_config={key: value})
    assert needed in str(info.value) and "BILLING_KAFKA_CONFIG" in str(info.value)


def test_required_values_may_be_restated_and_callers_cannot_weaken_them():
    s = _settings(kafka_config={"acks": "-1", "enable.idempotence": "true"})
    assert producer_config(s, acks=1, **{"enable.idempotence": False})["acks"] == "all"
    assert producer_config(s, **{"enable.idempotence": False})["enable.idempotence"] is True
    assert consumer_config(s, "g", **{"isolation.level": "read_uncommitted"})["isolation.level"] == "read_committed"


@pytest.mark.parametrize("key,instead", [
    ("bootstrap.servers", "BILLING_KAFKA_BOOTSTRAP_SERVERS"), ("group.id", "consumer groups"),
    ("fetch.max.bytes", "BILLING_KAFKA_FETCH_MAX_BYTES"),
])
def test_properties_with_their_own_setting_are_refused(key, instead):
    with pytest.raises(ValidationError, match=instead):
        _settings(kafka_config={key: "x"})


def test_refused_in_the_file_names_the_file(tmp_path):
    props = tmp_path / "k.properties"
    props.write_text("acks=0\n")
    with pytest.raises(ValidationError, match=r"BILLING_KAFKA_CONFIG_FILE .*k\.properties: acks='0'"):
        _settings(kafka_config_file=props)


def test_missing_secret_or_properties_file_is_refused_at_start(tmp_path):
    with pytest.raises(ValidationError, match="sasl.password: secret file .*nope does not exist"):
        _settings(kafka_config={"sasl.password": f"file:{tmp_path / 'nope'}"})
    with pytest.raises(ValidationError, match="BILLING_KAFKA_CONFIG_FILE: cannot read"):
        _settings(kafka_config_file=tmp_path / "absent.properties")


@pytest.mark.parametrize("value,says", [
    ('{"enable.auto.commit": true}', "enable.auto.commit=false"),
    ("{not json", 'error parsing value for field "kafka_config"'),
])
def test_cli_refuses_a_bad_setting_with_a_clear_message(value, says):
    env = {"BILLING_KAFKA_CONFIG": value, "PATH": "/usr/bin:/bin", "BILLING_ENV_FILE": ""}
    proc = subprocess.run([sys.executable, "-m", "billing.cli", "topics"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "configuration refused" in proc.stderr and says in proc.stderr
    assert "Traceback" not in proc.stderr


def test_topic_settings_defaults_and_per_topic_overrides():
    s = Settings(kafka_topic_config={"usage": {"partitions": 12, "retention.ms": 604800000},
                                     "billing.invoice-requests.v1": {"min.insync.replicas": 3,
                                                                     "cleanup.policy": "delete"}})
    specs = {t.name: t for t in topic_specs(s)}
    assert specs["billing.usage.v1"].partitions == 12 and specs["billing.usage.v1"].replication_factor == 3
    assert specs["billing.usage.v1"].config == {"compression.type": "zstd", "retention.ms": "604800000",
                                                "min.insync.replicas": "2"}
    assert specs["billing.invoice-requests.v1"].config.get("compression.type") is None
    assert specs["billing.invoice-requests.v1"].min_insync_replicas == 3
    assert specs["billing.usage.dlq.v1"].partitions == 6


@pytest.mark.parametrize("kw,match", [
    ({"kafka_topic_config": {"billing.usage.v2": {"partitions": 3}}}, "not one of the service's topics"),
    ({"kafka_topic_config": {"usage": {"partitions": "many"}}}, r"usage.v1'\]\.partitions: must be a positive"),
    ({"kafka_topic_config": {"usage": {"min.insync.replicas": 4}}}, "exceeds the replication factor 3"),
    ({"kafka_replication_factor": 1}, "must not exceed BILLING_KAFKA_REPLICATION_FACTOR"),
])
def test_bad_topic_settings_are_refused(kw, match):
    with pytest.raises(ValidationError, match=match):
        Settings(**kw)


def test_local_stack_env_asks_for_one_replica(tmp_path):
    from billing.devstack.stack import LocalStack

    stack = LocalStack.create(tmp_path, pg_port=1, kafka_port=2, controller_port=3, kafka_version="0",
                              kafka_cache_dir=tmp_path)
    s = Settings(**{k.removeprefix("BILLING_").lower(): v for k, v in stack.env().items()})
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (1, 1)
    assert [t.replication_factor for t in topic_specs(s)] == [1] * len(s.topics.all())


def test_unknown_variables_are_named_with_the_closest_setting(caplog):
    environ = {
        "BILLING_KAFKA_BOOTSTRAP_SERVER": "x",  # typo
        "BILLING_KAFKA_CONFIG": "{}", "BILLING_LOG_LEVEL": "INFO",  # known
        "BILLING_TOPIC_USAGE": "u",  # a topic name
        "BILLING_TOPIC_USGAE": "u",  # a topic typo
        "BILLING_TEST_DATABASE_URL": "t",  # the test harness
        "BILLING_NATIVE": "0",  # read by billing/native.py, not a setting
        "BILLING_WHATEVER_ENTIRELY": "1",
        "PATH": "/bin",
    }
    assert unknown_env(environ) == [
        ("BILLING_KAFKA_BOOTSTRAP_SERVER", "BILLING_KAFKA_BOOTSTRAP_SERVERS"),
        ("BILLING_TOPIC_USGAE", "BILLING_TOPIC_USAGE"),
        ("BILLING_WHATEVER_ENTIRELY", None),
    ]
    with caplog.at_level(logging.WARNING, logger="billing.config"):
        warn_unknown_env(environ)
    lines = [r.getMessage() for r in caplog.records]
    assert "unknown setting BILLING_KAFKA_BOOTSTRAP_SERVER is ignored; did you mean BILLING_KAFKA_BOOTSTRAP_SERVERS?" \
        in lines
    assert "unknown setting BILLING_WHATEVER_ENTIRELY is ignored" in lines
    assert len(lines) == 3


def test_unknown_variable_warned_by_the_cli():
    env = {"BILLING_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BILLING_KAFKA_REPLICATION_FACTR": "1",
           "BILLING_KAFKA_REPLICATION_FACTOR": "1", "BILLING_KAFKA_MIN_INSYNC_REPLICAS": "1", "PATH": "/usr/bin:/bin",
           "BILLING_ADMIN_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/billing", "BILLING_ENV_FILE": ""}
    proc = subprocess.run([sys.executable, "-m", "billing.cli", "migrate"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert "unknown setting BILLING_KAFKA_REPLICATION_FACTR is ignored; did you mean " \
           "BILLING_KAFKA_REPLICATION_FACTOR?" in proc.stderr

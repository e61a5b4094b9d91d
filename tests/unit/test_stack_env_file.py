"""The local stack's settings file: read by Settings() when present, below explicit values
and the environment, off with BILLING_ENV_FILE="" (as the test suite runs); and the
reachability checks' address parsing."""
from __future__ import annotations

import socket

import pytest

from billing.config import Settings, default_state_dir, stack_env_file
from billing.devstack.cli import export_lines, remove_env_file, write_env_file
from billing.ops import reach
from billing.store.migrations import MigrationError, load_migrations

STACK = {"BILLING_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:59092",
         "BILLING_ADMIN_DATABASE_URL": "postgresql://billing_owner:billing_owner@127.0.0.1:55432/billing",
         "BILLING_KAFKA_REPLICATION_FACTOR": "1", "BILLING_KAFKA_MIN_INSYNC_REPLICAS": "1"}


@pytest.fixture()
def stack_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("BILLING_ENV_FILE", raising=False)  # the suite turns the file off: on here
    for name in STACK:
        monkeypatch.delenv(name, raising=False)
    write_env_file(Settings(state_dir=tmp_path, env_file=""), STACK)
    return tmp_path


def test_the_file_is_read_when_present(stack_dir):
    s = Settings(state_dir=stack_dir)
    assert s.kafka_bootstrap_servers == "127.0.0.1:59092" and s.kafka_replication_factor == 1
    assert s.admin_database_url.endswith(":55432/billing")
    assert stack_env_file({"state_dir": stack_dir}, {}) == stack_dir / "env"


def test_the_state_dir_from_the_environment_finds_it(stack_dir, monkeypatch):
    monkeypatch.setenv("BILLING_STATE_DIR", str(stack_dir))
    assert Settings().kafka_bootstrap_servers == "127.0.0.1:59092"


def test_explicit_values_and_the_environment_win(stack_dir, monkeypatch):
    assert Settings(state_dir=stack_dir, kafka_bootstrap_servers="k:1").kafka_bootstrap_servers == "k:1"
    monkeypatch.setenv("BILLING_KAFKA_BOOTSTRAP_SERVERS", "env:2")
    s = Settings(state_dir=stack_dir)
    assert s.kafka_bootstrap_servers == "env:2" and s.admin_database_url.endswith(":55432/billing")


def test_empty_env_file_setting_reads_no_file(stack_dir, monkeypatch):
    assert Settings(state_dir=stack_dir, env_file="").kafka_bootstrap_servers == "127.0.0.1:9092"
    monkeypatch.setenv("BILLING_ENV_FILE", "")
    assert Settings(state_dir=stack_dir).kafka_bootstrap_servers == "127.0.0.1:9092"


def test_another_file_by_name(stack_dir, tmp_path, monkeypatch):
    other = tmp_path / "other.env"
    other.write_text("BILLING_KAFKA_BOOTSTRAP_SERVERS=elsewhere:9092\n")
    monkeypatch.setenv("BILLING_ENV_FILE", str(other))
    assert Settings(state_dir=stack_dir).kafka_bootstrap_servers == "elsewhere:9092"


def test_removed_when_the_stack_stops(stack_dir):
    remove_env_file(Settings(state_dir=stack_dir, env_file=""))
    assert not (stack_dir / "env").exists()
    assert Settings(state_dir=stack_dir).kafka_bootstrap_servers == "127.0.0.1:9092"


def test_the_suite_reads_no_stack_file():
    # tests/conftest.py: a developer's `make run` next to the suite must not leak in.
    assert stack_env_file() is None


def test_export_lines_quote_for_the_shell():
    assert export_lines({"BILLING_A": "x y", "BILLING_B": "postgresql://u:p@h:1/d"}) == \
        "export BILLING_A='x y'\nexport BILLING_B=postgresql://u:p@h:1/d"


def test_default_state_dir_of_a_checkout():
    assert default_state_dir().name == ".state" and (default_state_dir().parent / "pyproject.toml").is_file()


@pytest.mark.parametrize("url,expected", [
    ("postgresql://u:p@127.0.0.1:5433/billing", [("127.0.0.1", 5433)]),
    ("postgres://u@db.example/billing", [("db.example", 5432)]),
    ("postgresql://u@h1:1,h2:2/billing", [("h1", 1), ("h2", 2)]),
    ("postgresql://u@[::1]:6543/billing", [("::1", 6543)]),
    ("postgresql://u@/billing?host=/var/run/postgresql", []),  # a Unix socket: left to the driver
    ("postgresql:///billing", []),
    ("host=localhost dbname=billing", []),
])
def test_postgres_addresses(url, expected):
    assert reach.postgres_addresses(url) == expected


def test_kafka_addresses():
    assert reach.kafka_addresses("a:1, SASL_SSL://b:2,c") == [("a", 1), ("b", 2), ("c", 9092)]


def test_unreachable_names_address_and_setting():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(reach.Unreachable, match=rf"^cannot reach Kafka at 127.0.0.1:{port} "
                                                    r"\(BILLING_KAFKA_BOOTSTRAP_SERVERS\): connection refused$"):
            reach.check_kafka(f"127.0.0.1:{port}")


def test_one_reachable_address_is_enough():
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))
        reach.check_kafka(f"127.0.0.1:{closed.getsockname()[1]},127.0.0.1:{listening.getsockname()[1]}")
        with pytest.raises(reach.Unreachable, match="cannot listen for HTTP"):
            reach.check_can_listen("HTTP", "127.0.0.1", listening.getsockname()[1], "BILLING_HTTP_PORT")


def test_no_migration_files_is_an_error(tmp_path):
    with pytest.raises(MigrationError, match="no migration files"):
        load_migrations(tmp_path)
    with pytest.raises(MigrationError, match="no migrations directory"):
        load_migrations(tmp_path / "absent")
    assert len(load_migrations(Settings().migrations_dir)) >= 17  # the installed ones

"""What an installation is made of: the package data found through importlib.resources, the
pinned dependency versions, the image built from the wheel, the compose stack on 127.0.0.1.
(tests/e2e/test_wheel.py builds and installs the real wheel.)"""
from __future__ import annotations

import re
import tomllib

from billing import codec, resources
from tests.conftest import PROJECT_ROOT


def test_package_data_is_read_through_importlib_resources():
    assert sorted(p.name for p in resources.migrations_dir().glob("*.sql")) == \
        sorted(p.name for p in (PROJECT_ROOT / "migrations").glob("*.sql"))
    assert codec.SCHEMA_DIR == resources.schemas_dir() / "avro"
    assert (resources.schemas_dir() / "avro" / "usage_event.avsc").is_file()
    assert (resources.schemas_dir() / "proto" / "billing" / "v1" / "billing.proto").is_file()


def test_constraints_pin_every_dependency():
    pins = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not a pin: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]).lower()
        if name == "setuptools":  # the build tool: pip freeze leaves it out, pip keeps it current
            continue
        assert name in pins, f"{name} is not pinned in constraints.txt (make constraints)"
    assert "billing-service" not in pins
    assert "-c constraints.txt" in (PROJECT_ROOT / "Makefile").read_text()


def test_the_image_installs_the_built_wheel():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) == 2
    assert "pip wheel" in dockerfile and "billing_service-*.whl" in dockerfile
    assert "-c /tmp/constraints.txt" in dockerfile
    assert not re.search(r"pip install[^\n]* -e ", dockerfile)
    assert "BILLING_MIGRATIONS_DIR" not in dockerfile  # the wheel carries its migrations
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".state", ".git", "tests"} <= set(ignored)


def test_compose_publishes_on_loopback_only_and_keeps_kafka_data():
    compose = (PROJECT_ROOT / "docker-compose.yml").read_text()
    published = [p for line in re.findall(r"^\s+ports: \[(.*)\]", compose, re.M) for p in line.split(",")]
    assert len(published) >= 7
    for port in published:
        assert port.strip().strip('"').startswith("127.0.0.1:"), port
    assert not re.search(r"^\s+ports:\s*$", compose, re.M)  # every list written inline, so checked above
    assert "kafkadata:/var/lib/kafka/data" in compose and re.search(r"^  kafkadata:", compose, re.M)
    assert "KAFKA_LOG_DIRS: /var/lib/kafka/data" in compose

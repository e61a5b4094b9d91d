"""Failures as an operator meets them: one line on stderr (a JSON log line for `billing serve`),
a non-zero exit code, no traceback unless --debug, within seconds; and a serving process
whose every stderr line is JSON."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from billing.devstack import free_port
from tests.e2e.test_process import _env, _wait_ready


def _billing(*args: str, env: dict, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "billing.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - started


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _one_json_line(proc: subprocess.CompletedProcess) -> dict:
    line = json.loads(_one_line(proc))
    assert line["level"] == "error" and line["logger"] == "billing.cli"
    return line


@pytest.fixture()
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("which", ["HTTP", "GRPC"])
def test_serve_on_a_taken_port_is_one_json_line(migrated, taken_port, which):
    ports = {"BILLING_HTTP_PORT": str(free_port()), "BILLING_GRPC_PORT": str(free_port())}
    ports[f"BILLING_{which}_PORT"] = str(taken_port)
    proc, seconds = _billing("serve", "--roles", "api", env=_env(migrated, **ports))
    line = _one_json_line(proc)
    kind = "HTTP" if which == "HTTP" else "gRPC"
    assert f"cannot listen for {kind} on 127.0.0.1:{taken_port} (BILLING_{which}_HOST/BILLING_{which}_PORT)" \
        in line["msg"], line
    assert seconds < 15


def test_serve_with_the_database_unreachable_is_one_json_line(migrated):
    nowhere = free_port()
    env = _env(migrated, BILLING_DATABASE_URL=f"postgresql://billing_app:x@127.0.0.1:{nowhere}/billing",
               BILLING_HTTP_PORT=str(free_port()), BILLING_GRPC_PORT=str(free_port()))
    proc, seconds = _billing("serve", "--roles", "api", env=env)
    line = _one_json_line(proc)
    assert line["msg"] == (f"billing serve failed: cannot reach PostgreSQL at 127.0.0.1:{nowhere} "
                           "(BILLING_DATABASE_URL): connection refused")
    assert seconds < 15


def test_debug_adds_the_traceback(migrated):
    nowhere = free_port()
    env = _env(migrated, BILLING_ADMIN_DATABASE_URL=f"postgresql://billing_owner:x@127.0.0.1:{nowhere}/billing")
    proc, _ = _billing("migrate", "--debug", env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("billing migrate: cannot reach PostgreSQL")


@pytest.mark.parametrize("args,setting", [
    (["migrate"], "BILLING_ADMIN_DATABASE_URL"),
    (["tenants", "create", "acme"], "BILLING_ADMIN_DATABASE_URL"),
    (["topics"], "BILLING_KAFKA_BOOTSTRAP_SERVERS"),
    (["tenants", "list"], "BILLING_ADMIN_DATABASE_URL"),
    (["tenants", "rotate-key", "00000000-0000-0000-0000-000000000001"], "BILLING_ADMIN_DATABASE_URL"),
    (["invoices", "tail", "--max", "1"], "BILLING_KAFKA_BOOTSTRAP_SERVERS"),
    (["produce-usage", "--count", "1000", "--tenant-id", "00000000-0000-0000-0000-000000000001",
      "--subscription-ids", "s1"], "BILLING_KAFKA_BOOTSTRAP_SERVERS"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_commands_fail_in_one_line_naming_address_and_setting(migrated, args, setting):
    nowhere = free_port()
    env = _env(migrated, BILLING_ADMIN_DATABASE_URL=f"postgresql://billing_owner:x@127.0.0.1:{nowhere}/billing",
               BILLING_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{nowhere}")
    proc, seconds = _billing(*args, env=env)
    what = "Kafka" if "KAFKA" in setting else "PostgreSQL"
    command = " ".join(args[:2] if args[0] in ("tenants", "invoices") else args[:1])
    assert _one_line(proc) == f"billing {command}: cannot reach {what} at 127.0.0.1:{nowhere} ({setting}): " \
                              "connection refused"
    assert proc.returncode == 2 and proc.stdout == "" and seconds < 15


@pytest.mark.parametrize("args,expected", [
    (["tenants", "create", ""], "billing tenants create: tenant name must be 1..200 characters, got ''"),
    (["tenants", "revoke-key", "not-a-uuid"],
     "billing tenants revoke-key: api_key_id must be a UUID (the api_key_id `tenants create` printed), "
     "got 'not-a-uuid'"),
    (["serve", "--roles", "api,nonsense"], None),
    (["tenants", "create"], "billing tenants create: the following arguments are required: name (--help for usage)"),
])
def test_bad_input_is_one_line(migrated, args, expected):
    proc, _ = _billing(*args, env=_env(migrated))
    if expected is None:
        assert "unknown roles nonsense; known: api, commands" in _one_json_line(proc)["msg"]
    else:
        assert _one_line(proc) == expected
    assert proc.returncode == 2


def test_every_stderr_line_of_a_serving_process_is_json(migrated, tmp_path):
    http_port = free_port()
    env = _env(migrated, BILLING_GRPC_PORT=str(free_port()), BILLING_HTTP_PORT=str(http_port))
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert _wait_ready(f"http://127.0.0.1:{http_port}/readyz")["ready"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.read_text().splitlines()
    assert lines, "the service logged nothing"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"not JSON on stderr: {line!r}")

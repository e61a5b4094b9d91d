"""The real process, as an operator runs it: `billing tenants create`, `billing serve`, SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc

from billing.devstack import free_port
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.integration.test_plans_api import plan_request


def _env(settings, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        # Deterministic tests: no scheduler billing every tenant of the shared test database.
        "BILLING_SCHEDULER_INTERVAL_S": "0",
        # A short drain on SIGTERM: these tests stop the process often (tests/e2e/test_drain.py checks the window).
        "BILLING_SHUTDOWN_DRAIN_S": "0.5",
        "BILLING_DATABASE_URL": settings.database_url,
        "BILLING_WORKER_DATABASE_URL": settings.worker_database_url,
        "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url,
        "BILLING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "BILLING_KAFKA_REPLICATION_FACTOR": str(settings.kafka_replication_factor),
        "BILLING_KAFKA_MIN_INSYNC_REPLICAS": str(settings.kafka_min_insync_replicas),
        **extra,
    })
    return env


def _billing(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "billing.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def _wait_ready(url: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"{url} never ready: {last}")


def test_cli_tenant_serve_call_and_graceful_stop(migrated, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    env = _env(migrated, BILLING_GRPC_PORT=str(grpc_port), BILLING_HTTP_PORT=str(http_port))

    migrate = _billing("migrate", env=env)
    assert migrate.returncode == 0 and json.loads(migrate.stdout) == {"applied": []}

    created = _billing("tenants", "create", "acme", env=env)
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)
    assert set(tenant) == {"tenant_id", "name", "api_key_id", "api_key"} and tenant["api_key"].startswith("bk_")

    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        ready = _wait_ready(f"http://127.0.0.1:{http_port}/readyz")
        assert ready["ready"] is True

        create_and_get_plan(grpc_port, tenant["api_key"])

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r["msg"] == "service started" for r in records)
    assert any(r["msg"] == "service stopped" for r in records)
    assert tenant["api_key"] not in log_path.read_text()


def create_and_get_plan(port: int, api_key: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        md = (("authorization", f"Bearer {api_key}"),)
        plan = stub.CreatePlan(plan_request(), metadata=md, timeout=10).plan
        assert stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=md, timeout=10).plan == plan


def test_missing_java_or_maven_is_one_clear_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), BILLING_STATE_DIR=str(tmp_path / "state"),
               BILLING_KAFKA_CACHE_DIR=str(tmp_path / "cache"))
    code = (
        "from pathlib import Path\n"
        "from billing.devstack import LocalKafka\n"
        f"LocalKafka(Path('{tmp_path}/k'), 1, 2, '4.1.1', Path('{tmp_path}/cache')).start(5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "is not installed" in last and "BILLING_KAFKA_BOOTSTRAP_SERVERS" in last

"""Graceful drain of a real `billing serve` process: SIGTERM turns health NOT_SERVING (gRPC
health and /readyz), calls are still answered for BILLING_SHUTDOWN_DRAIN_S, then the process
closes its port, stops its roles and exits 0."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing.devstack import free_port
from tests.http_probe import get_json
from tests.e2e.test_process import _billing, _env, _wait_ready, create_and_get_plan

DRAIN_S = 4.0


def _readyz(port: int) -> tuple[int, dict | None]:
    return get_json(f"http://127.0.0.1:{port}/readyz", timeout_s=2)


def test_sigterm_drains_then_exits_zero(migrated, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    env = _env(migrated, BILLING_GRPC_PORT=str(grpc_port), BILLING_HTTP_PORT=str(http_port),
               BILLING_SHUTDOWN_DRAIN_S=str(DRAIN_S))
    created = _billing("tenants", "create", "drain", env=env)
    assert created.returncode == 0, created.stderr
    api_key = json.loads(created.stdout)["api_key"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)

    def status() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service="billing.v1.BillingService"), timeout=2).status

    try:
        deadline = time.monotonic() + 90
        while _wait_ready(f"http://127.0.0.1:{http_port}/readyz")["ready"] is not True:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        assert status() == health_pb2.HealthCheckResponse.SERVING

        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while status() != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() - signalled < 2, "health never went NOT_SERVING"
            time.sleep(0.05)
        code, body = _readyz(http_port)
        assert code == 503 and body["ready"] is False and body["checks"]["shutdown"] == "draining"
        # still answering within the window
        create_and_get_plan(grpc_port, api_key)
        # and it stays not ready through the window, though readiness re-checks every 2 s
        time.sleep(max(0.0, DRAIN_S - 1.2 - (time.monotonic() - signalled)))
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING and _readyz(http_port)[0] == 503
        create_and_get_plan(grpc_port, api_key)
        assert time.monotonic() - signalled < DRAIN_S and proc.poll() is None

        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - signalled >= DRAIN_S - 0.5  # it did wait out the window
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    messages = [r["msg"] for r in records]
    assert "draining" in messages and messages.index("draining") < messages.index("service stopped")

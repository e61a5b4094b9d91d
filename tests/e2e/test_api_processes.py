"""BILLING_GRPC_PROCESSES=2: a real `billing serve --roles api` starts a second API process on
the same gRPC port; both answer calls, each is ready on its own HTTP side port and counts its
own calls there; SIGTERM stops both, exit 0. A second process that dies stops the service."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import psutil

from billing.devstack import free_port
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.e2e.test_process import _billing, _env, _wait_ready


def _ok_calls(http_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(r'^billing_grpc_requests_total\{.*method="ListPlans".*\} (\S+)$', text, re.M)
    return sum(float(x) for x in found)


def _start(migrated, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    env = _env(migrated, BILLING_GRPC_PORT=str(grpc_port), BILLING_HTTP_PORT=str(http_port),
               BILLING_GRPC_PROCESSES="2")
    created = _billing("tenants", "create", "two-processes", env=env)
    assert created.returncode == 0, created.stderr
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "api"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    for port in (http_port, http_port + 1):
        deadline = time.monotonic() + 90
        while _wait_ready(f"http://127.0.0.1:{port}/readyz", 90)["ready"] is not True:
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
    return proc, grpc_port, http_port, json.loads(created.stdout)["api_key"]


def test_two_processes_share_the_port_and_stop_together(migrated, tmp_path):
    proc, grpc_port, http_port, api_key = _start(migrated, tmp_path)
    try:
        [child] = psutil.Process(proc.pid).children()
        md = (("authorization", f"Bearer {api_key}"),)
        for _ in range(40):  # a channel per call: the kernel spreads new connections over both
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                assert billing_pb2_grpc.BillingServiceStub(channel).ListPlans(
                    pb.ListPlansRequest(), metadata=md, timeout=10).plans == []
        first, second = _ok_calls(http_port), _ok_calls(http_port + 1)
        assert first + second == 40 and first > 0 and second > 0, (first, second)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_dead_api_process_stops_the_service(migrated, tmp_path):
    proc, _, _, _ = _start(migrated, tmp_path)
    try:
        [child] = psutil.Process(proc.pid).children()
        child.kill()
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()

"""BILLING_EVENT_LOOP=uvloop (the default): a real `billing serve --roles api` runs on libuv's loop and
answers CheckEntitlement as on asyncio's, bad paths included: an unknown feature, an unknown
subscription, another tenant's subscription, a revoked key (refused at once); SIGTERM, exit 0.
A value that is not a loop is refused at start, naming the setting."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import grpc
import psutil
import pytest

from billing.config import Settings
from billing.devstack import free_port
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.e2e.test_process import _billing, _env, _wait_ready
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import ts


def _tenant(env: dict, name: str) -> dict:
    created = _billing("tenants", "create", name, env=env)
    assert created.returncode == 0, created.stderr
    return json.loads(created.stdout)


def test_uvloop_serves_checks_and_refuses_the_bad_ones(migrated, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    env = _env(migrated, BILLING_GRPC_PORT=str(grpc_port), BILLING_HTTP_PORT=str(http_port),
               BILLING_EVENT_LOOP="uvloop")
    mine, theirs = _tenant(env, "uvloop-mine"), _tenant(env, "uvloop-theirs")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "api"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while _wait_ready(f"http://127.0.0.1:{http_port}/readyz", 90)["ready"] is not True:
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
        assert any("uvloop" in m.path for m in psutil.Process(proc.pid).memory_maps())
        md = (("authorization", f"Bearer {mine['api_key']}"),)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            plan = stub.CreatePlan(plan_request(trial_days=0, features=[
                pb.Feature(code="sso", kind=pb.FEATURE_KIND_BOOLEAN),
                pb.Feature(code="tier", kind=pb.FEATURE_KIND_STATIC, value="gold")]),
                metadata=md, timeout=10).plan
            sub = stub.CreateSubscription(pb.CreateSubscriptionRequest(
                request_id=str(uuid.uuid4()), customer_id="c", plan_id=plan.id, activate=True,
                start_at=ts(datetime.now(timezone.utc))),
                metadata=md, timeout=10).subscription

            def check(sub_id: str, code: str, metadata=md) -> pb.Entitlement:
                return stub.CheckEntitlement(pb.CheckEntitlementRequest(subscription_id=sub_id, feature_code=code),
                                             metadata=metadata, timeout=10).entitlement

            assert check(sub.id, "sso").allowed
            tier = check(sub.id, "tier")
            assert tier.allowed and tier.value == "gold"
            unknown = check(sub.id, "nope")
            assert not unknown.allowed and unknown.reason == "feature_not_in_plan"
            for sub_id, metadata in ((str(uuid.uuid4()), md),
                                     (sub.id, (("authorization", f"Bearer {theirs['api_key']}"),))):
                with pytest.raises(grpc.RpcError) as err:
                    check(sub_id, "sso", metadata)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            revoked = _billing("tenants", "revoke-key", mine["api_key_id"], env=env)
            assert revoked.returncode == 0, revoked.stderr
            with pytest.raises(grpc.RpcError) as err:
                check(sub.id, "sso")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_uvloop_is_the_default_and_asyncio_stays_a_choice():
    assert Settings.model_fields["event_loop"].default == "uvloop"
    assert Settings(event_loop="asyncio").event_loop == "asyncio"


def test_an_unknown_loop_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="event_loop"):
        Settings(event_loop="tokio")

"""Alerts can fire on the first failure: a fresh `billing serve` process's /metrics already
has every failure series at 0 (a counter born at 1 shows no increase()), and every metric
the alert rules use is one the real process exports."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing.devstack import free_port
from billing.runtime import BILLING_GROUP, COMMANDS_GROUP, USAGE_GROUP
from billing.services.usage import REJECTION_REASONS
from tests.conftest import PROJECT_ROOT
from tests.e2e.test_process import _env

pytestmark = pytest.mark.timeout(120)


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _scrape_when_consumers_are_up(port: int, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "billing serve exited"
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            text = ""
        if all(f'group="{g}"' in text for g in (USAGE_GROUP, COMMANDS_GROUP, BILLING_GROUP)):
            return text
        time.sleep(0.3)
    raise AssertionError("the consumers' series never appeared on /metrics")


def test_a_fresh_process_exports_failure_series_at_zero_and_every_alerted_metric(migrated):
    port = free_port()
    env = _env(migrated, BILLING_HTTP_PORT=str(port), BILLING_GRPC_PORT=str(free_port()), BILLING_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = _scrape_when_consumers_are_up(port, proc)
    finally:
        proc.terminate()
        proc.wait(30)
    samples = _samples(text)

    def zero(name: str, **labels: str) -> None:
        key = (name, frozenset(labels.items()))
        assert samples.get(key) == 0.0, f"{name}{labels}: {samples.get(key)}"

    zero("billing_runs_total", status="failed")
    zero("billing_subscriptions_total", outcome="failed")
    zero("billing_subscriptions_auto_resumed_total", outcome="failed")
    for reason in ("message_too_large", "invalid_record"):
        zero("billing_outbox_parked_total", reason=reason)
    for group in (USAGE_GROUP, COMMANDS_GROUP, BILLING_GROUP):
        zero("billing_consumer_dead_letters_total", group=group, reason="undecodable")
    for reason in REJECTION_REASONS:
        zero("billing_consumer_dead_letters_total", group=USAGE_GROUP, reason=reason)
    zero("billing_consumer_dead_letters_total", group=COMMANDS_GROUP, reason="unknown_tenant")
    zero("billing_consumer_dead_letters_total", group=BILLING_GROUP, reason="unknown_run")
    for code in ("INTERNAL", "UNKNOWN", "UNAVAILABLE"):
        zero("billing_grpc_requests_total", method="RunBilling", code=code)

    # Every billing_* name an alert uses is on the real process's /metrics (histograms by their base name).
    exported = {family.name for family in text_string_to_metric_families(text)}
    exported |= {name + "_total" for name in exported}
    rules = (PROJECT_ROOT / "deploy" / "prometheus-alerts.yml").read_text()
    used = set(re.findall(r"\bbilling_[a-z_]+", rules))
    assert used and used <= exported, sorted(used - exported)

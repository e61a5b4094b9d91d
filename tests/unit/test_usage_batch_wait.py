"""BILLING_USAGE_BATCH_WAIT_MS: the usage consumer's batch wait (docs/alerts.md, "Alert lag")."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from billing.config import Settings
from billing.runtime import usage_consumer


def test_the_usage_consumer_waits_as_configured():
    assert usage_consumer(Settings(env_file=""), None)._batching.max_wait_s == 0.5
    assert usage_consumer(Settings(env_file="", usage_batch_wait_ms=100), None)._batching.max_wait_s == 0.1
    # A caller's own wait (the tests') still wins.
    assert usage_consumer(Settings(env_file="", usage_batch_wait_ms=100), None,
                          max_batch_wait_s=0.05)._batching.max_wait_s == 0.05


@pytest.mark.parametrize("value", [0, -1, 10_001])
def test_a_wait_out_of_range_is_refused_naming_the_setting(value):
    with pytest.raises(ValidationError, match="usage_batch_wait_ms"):
        Settings(env_file="", usage_batch_wait_ms=value)

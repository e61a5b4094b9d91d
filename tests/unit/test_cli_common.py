"""Where the client commands call and with which key (billing/cli_common.py): the flags win,
then the settings, which read the environment and then the stack's file that `billing dev`
writes; and the small parsers of their flags."""
from __future__ import annotations

import pytest

from billing.cli_common import CommandError, api_address, api_key, enum_value, enum_words, timestamp
from billing.config import Settings
from billing.devstack.cli import write_env_file
from billing.v1 import billing_pb2 as pb


def test_the_address_flag_then_the_setting_then_the_grpc_listener():
    assert api_address(Settings(api_address="api.example:443"), "10.0.0.1:5") == ("10.0.0.1:5", "--address")
    assert api_address(Settings(api_address="api.example:443"), None) == ("api.example:443", "BILLING_API_ADDRESS")
    assert api_address(Settings(grpc_host="0.0.0.0", grpc_port=50099), None)[0] == "127.0.0.1:50099"
    assert api_address(Settings(grpc_host="10.1.2.3", grpc_port=7), None)[0] == "10.1.2.3:7"


def test_the_key_flag_then_the_setting_and_none_is_one_line(monkeypatch):
    monkeypatch.delenv("BILLING_API_KEY", raising=False)
    assert api_key(Settings(api_key="bk_setting"), "bk_flag") == ("bk_flag", "--api-key")
    with pytest.raises(CommandError, match="no API key: pass --api-key or set BILLING_API_KEY"):
        api_key(Settings(api_key=""), None)


def test_billing_devs_file_points_the_commands_at_its_api(tmp_path, monkeypatch):
    for name in ("BILLING_API_KEY", "BILLING_API_ADDRESS", "BILLING_ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(state_dir=tmp_path, env_file="")
    write_env_file(settings, {"BILLING_API_ADDRESS": "127.0.0.1:50123", "BILLING_API_KEY": "bk_demo"})
    from_file = Settings(state_dir=tmp_path)
    assert api_address(from_file, None) == ("127.0.0.1:50123", "BILLING_API_ADDRESS")
    assert api_key(from_file, None) == ("bk_demo", "BILLING_API_KEY of the stack's env file")
    monkeypatch.setenv("BILLING_API_KEY", "bk_exported")  # the environment wins over the file
    assert api_key(Settings(state_dir=tmp_path), None) == ("bk_exported", "BILLING_API_KEY")


def test_enum_words_and_values():
    assert enum_words(pb.BillingTiming, "BILLING_TIMING_") == ["in-advance", "in-arrears"]
    assert enum_value(pb.BillingTiming, "BILLING_TIMING_", "in-arrears") == pb.BILLING_TIMING_IN_ARREARS
    assert enum_value(pb.SubscriptionStatus, "SUBSCRIPTION_STATUS_", None) == 0


def test_times_need_an_offset():
    assert timestamp("2026-11-01T00:00:00Z", "--as-of").seconds == 1793491200
    assert timestamp("2026-11-01T01:00:00+01:00", "--as-of").seconds == 1793491200
    assert timestamp(None, "--as-of") is None
    with pytest.raises(CommandError, match="--as-of: the time needs its UTC offset"):
        timestamp("2026-11-01T00:00:00", "--as-of")
    with pytest.raises(CommandError, match="--start-at: not an RFC 3339 time"):
        timestamp("tomorrow", "--start-at")

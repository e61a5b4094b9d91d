"""Which of BILLING_* and the standard OTEL_* variables configure tracing (billing.ops.tracing.resolve)."""
from __future__ import annotations

import pytest

from billing.config import Settings
from billing.ops.tracing import resolve


def _settings(monkeypatch, **billing: str) -> Settings:
    for key in ("BILLING_OTEL_SERVICE_NAME", "BILLING_TRACE_SAMPLE_RATIO", "BILLING_OTLP_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in billing.items():
        monkeypatch.setenv(key, value)
    return Settings(env_file="")


def test_defaults_without_any_variable(monkeypatch):
    cfg = resolve(_settings(monkeypatch), {})
    assert (cfg.service_name, cfg.sample_ratio, cfg.endpoint, cfg.protocol) == ("billing-service", 1.0, None, "grpc")


def test_otel_variables_apply_when_no_billing_setting_is_given(monkeypatch):
    cfg = resolve(_settings(monkeypatch), {
        "OTEL_SERVICE_NAME": "from-otel", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert cfg.service_name == "from-otel"
    assert cfg.sample_ratio is None  # the SDK builds the sampler from OTEL_TRACES_SAMPLER(_ARG)
    assert (cfg.endpoint, cfg.protocol, cfg.endpoint_from_billing) == ("http://collector:4318", "http/protobuf", False)


def test_explicit_billing_settings_win_over_otel(monkeypatch):
    settings = _settings(monkeypatch, BILLING_OTEL_SERVICE_NAME="from-billing", BILLING_TRACE_SAMPLE_RATIO="0.5",
                         BILLING_OTLP_ENDPOINT="http://mine:4317")
    cfg = resolve(settings, {"OTEL_SERVICE_NAME": "from-otel", "OTEL_TRACES_SAMPLER": "always_off",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4317"})
    assert (cfg.service_name, cfg.sample_ratio, cfg.endpoint, cfg.endpoint_from_billing) == (
        "from-billing", 0.5, "http://mine:4317", True)


def test_service_name_from_resource_attributes(monkeypatch):
    cfg = resolve(_settings(monkeypatch), {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=res"})
    assert cfg.service_name == "res"
    assert resolve(_settings(monkeypatch), {"OTEL_RESOURCE_ATTRIBUTES": "service.name=res",
                                            "OTEL_SERVICE_NAME": "otel"}).service_name == "otel"


def test_traces_protocol_wins_over_general_and_unknown_protocol_is_named(monkeypatch):
    settings = _settings(monkeypatch)
    assert resolve(settings, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}).protocol == "http/protobuf"
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        resolve(settings, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})

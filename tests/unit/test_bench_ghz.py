"""bench/ghz: ghz's JSON report read into the benches' figures, every non-OK status an error.

The fixture is a real report of ghz v0.120.0 (`--format json`): 80 CheckEntitlement calls,
60 on existing subscriptions, 10 on an id that is not a UUID, 10 on an unknown one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import ghz

REPORT = json.loads((Path(__file__).parent / "fixtures" / "ghz_check_entitlement_report.json").read_text())


def test_a_real_report_gives_counts_rates_and_latencies_of_the_ok_calls():
    r = ghz.parse_report(REPORT, cpu_s=0.006)
    assert (r["calls"], r["ok"], r["errors"]) == (80, 60, 20)
    assert r["error_codes"] == {"InvalidArgument": 10, "NotFound": 10}
    assert sum(r["error_messages"].values()) == 20
    assert r["seconds"] == pytest.approx(0.45, abs=0.01)
    assert r["ok_per_s"] == round(60 / 0.4540223)  # the OK calls only, not ghz's rps of every call
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"]) == (13.72, 40.77, 243.95, 243.95)
    assert r["cpu_us_per_call"] == pytest.approx(100.0)
    assert r["end_reason"] == "normal"


def test_every_status_but_ok_is_an_error_whatever_the_error_strings_say():
    report = {"count": 9, "total": 1_000_000_000, "errorDistribution": {},
              "statusCodeDistribution": {"OK": 5, "Unavailable": 2, "DeadlineExceeded": 1, "Canceled": 1},
              "latencyDistribution": [{"percentage": 99, "latency": 3_000_000}], "slowest": 4_000_000}
    r = ghz.parse_report(report)
    assert (r["ok"], r["errors"]) == (5, 4)
    assert r["error_codes"] == {"Unavailable": 2, "DeadlineExceeded": 1, "Canceled": 1}
    assert r["ok_per_s"] == 5 and r["p99_ms"] == 3.0 and r["cpu_us_per_call"] is None


def test_calls_missing_from_the_status_counts_are_errors_too():
    r = ghz.parse_report({"count": 10, "total": 2_000_000_000, "statusCodeDistribution": {"OK": 7}})
    assert r["errors"] == 3


def test_a_run_where_every_call_failed_has_no_latencies_and_no_rate():
    report = {"count": 4, "total": 1_000_000_000, "statusCodeDistribution": {"Unauthenticated": 4},
              "errorDistribution": {"rpc error: code = Unauthenticated desc = missing API key": 4},
              "latencyDistribution": None, "slowest": 0}
    r = ghz.parse_report(report, cpu_s=0.01)
    assert (r["ok"], r["errors"], r["ok_per_s"]) == (0, 4, 0)
    assert r["p99_ms"] is None and r["max_ms"] is None and r["cpu_us_per_call"] is None


def test_the_command_names_the_service_sends_the_key_and_lets_calls_in_flight_finish(tmp_path):
    cmd = ghz.command(Path("/bin/ghz"), "127.0.0.1:5", "CheckEntitlement", tmp_path / "d.json", "bk_1",
                      concurrency=50, connections=10, seconds=30, output=tmp_path / "r.json")
    assert cmd[cmd.index("--call") + 1] == "billing.v1.BillingService/CheckEntitlement"
    assert json.loads(cmd[cmd.index("--metadata") + 1]) == {"authorization": "Bearer bk_1"}
    assert cmd[cmd.index("--duration") + 1] == "30s" and cmd[cmd.index("--duration-stop") + 1] == "wait"
    assert "--disable-template-data" in cmd and cmd[-1] == "127.0.0.1:5"
    templated = ghz.command(Path("/bin/ghz"), "127.0.0.1:5", "RecordUsage", tmp_path / "d.json", "bk_1",
                            concurrency=50, connections=10, seconds=30, output=tmp_path / "r.json", templates=True)
    assert "--disable-template-data" not in templated and "--disable-template-functions" in templated
    few = ghz.command(Path("/bin/ghz"), "127.0.0.1:5", "RecordUsage", tmp_path / "d.json", "bk_1",
                      concurrency=5, connections=10, seconds=3, output=tmp_path / "r.json")
    assert few[few.index("--connections") + 1] == "5"  # ghz exits when connections exceed concurrency


def test_without_go_the_first_run_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(ghz, "go_binary", lambda: None)
    with pytest.raises(ghz.GhzError, match="needs Go .*--client python"):
        ghz.ensure_ghz(tmp_path)
    built = tmp_path / "go" / f"ghz-{ghz.VERSION}" / "ghz"
    built.parent.mkdir(parents=True)
    built.write_text("")
    assert ghz.ensure_ghz(tmp_path) == built  # cached: Go is not needed again

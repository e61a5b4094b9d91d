"""The deployment files stay true to the code: the Grafana dashboard and the alert rules
query only metrics that exist, docs/operations.md lists every metric, and the dashboard
file is the generated one."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from prometheus_client import REGISTRY

import billing.ops.metrics  # noqa: F401 - registers the service's metrics
from tests.conftest import PROJECT_ROOT

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "billing.json"
_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def _service_metrics() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("billing_"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_dashboard_queries_existing_metrics():
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    used = {_base(m) for e in exprs for m in re.findall(r"\bbilling_[a-z_]+", e)}
    known = _service_metrics()
    assert used and used <= known, sorted(used - known)


def test_alert_rules_use_existing_metrics():
    rules = (PROJECT_ROOT / "deploy" / "prometheus-alerts.yml").read_text()
    used = {_base(m) for m in re.findall(r"\bbilling_[a-z_]+", rules)}
    known = _service_metrics()
    assert used and used <= known, sorted(used - known)


def test_operations_doc_lists_every_metric():
    doc = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    missing = [m for m in _service_metrics() if f"`{m}`" not in doc]
    assert not missing, missing


def test_dashboard_file_is_generated(tmp_path):
    script = PROJECT_ROOT / "deploy" / "grafana" / "build_dashboard.py"
    out = subprocess.run([sys.executable, "-c", (
        "import runpy, pathlib, json; g = runpy.run_path(%r); print(json.dumps(g['dashboard'], indent=2))"
    ) % str(script)], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads(DASHBOARD.read_text()), "run deploy/grafana/build_dashboard.py"


def _yaml(path: str):
    import yaml

    return yaml.safe_load((PROJECT_ROOT / path).read_text())


def test_alert_rules_are_well_formed_and_include_a_target_down_alert():
    rules = [r for g in _yaml("deploy/prometheus-alerts.yml")["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    jobs = {c["job_name"] for c in _yaml("deploy/prometheus.yml")["scrape_configs"]}
    exprs = " ".join(r["expr"] for r in rules)
    assert set(re.findall(r'up\{job="([^"]+)"', exprs)) == jobs
    assert re.search(r"\babsent\(up\{", exprs) and re.search(r"up\{[^}]*\} == 0", exprs)


def test_prometheus_sends_alerts_to_the_compose_alertmanager():
    compose = _yaml("docker-compose.yml")["services"]
    prometheus = _yaml("deploy/prometheus.yml")
    targets = [t for am in prometheus["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets and all(t.split(":")[0] in compose for t in targets)
    mounts = " ".join(compose["alertmanager"]["volumes"])
    assert "./deploy/alertmanager.yml:" in mounts and "alertmanager" in compose["prometheus"]["depends_on"]
    config = _yaml("deploy/alertmanager.yml")
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert all(r["receiver"] in receivers for r in routes)
    alerts = {r["alert"] for g in _yaml("deploy/prometheus-alerts.yml")["groups"] for r in g["rules"]}
    for rule in config.get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            assert matcher.split("=", 1)[1].strip('"') in alerts, matcher


def test_failure_series_exist_before_any_failure():
    """Import alone creates them (a fresh process): the parked reasons match the relay's."""
    from producers.relay_holds import PARK_REASONS

    out = subprocess.run([sys.executable, "-c", "import billing.ops.metrics, prometheus_client, sys; "
                          "sys.stdout.write(prometheus_client.generate_latest().decode())"],
                         capture_output=True, text=True, check=True, cwd=PROJECT_ROOT).stdout
    assert 'billing_runs_total{status="failed"} 0.0' in out
    assert 'billing_subscriptions_total{outcome="failed"} 0.0' in out
    for reason in PARK_REASONS:
        assert f'billing_outbox_parked_total{{reason="{reason}"}} 0.0' in out

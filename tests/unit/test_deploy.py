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

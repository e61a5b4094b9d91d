"""Writes deploy/grafana/dashboards/billing.json: `python deploy/grafana/build_dashboard.py`.

The dashboard is generated so its panels stay consistent (one datasource, one grid); edit
this file rather than the JSON. Every metric it shows is listed in docs/operations.md.
"""
from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards" / "billing.json"


def ts(title, targets, unit="short", w=12, h=8, stack=False, description=""):
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"stacking": {"mode": "normal" if stack else "none"},
                                                              "fillOpacity": 10}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)],
        "_w": w, "_h": h,
    }


def stat(title, expr, legend="", unit="short", w=6, h=4, thresholds=None, description=""):
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": thresholds or [
            {"color": "green", "value": None}]}}, "overrides": []},
        "options": {"colorMode": "background", "reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": "A"}],
        "_w": w, "_h": h,
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


RED_AT_0 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
Q = "histogram_quantile"

panels = [
    row("Health"),
    stat("Ready replicas", "sum(billing_ready)", thresholds=RED_AT_0,
         description="Replicas whose PostgreSQL, Kafka and migrations checks pass (/readyz)."),
    stat("Not ready replicas", "count(billing_ready == 0) or vector(0)",
         thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
    stat("Dependencies down", "count(billing_dependency_up == 0) or vector(0)",
         thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
         description="Checks failing on some replica: see billing_dependency_up by dependency."),
    stat("Outbox relay leaders", "sum(billing_outbox_relay_leader)",
         thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}, {"color": "orange", "value": 2}],
         description="Exactly 1 when healthy: the advisory-lock leader; the others are standbys."),

    row("gRPC API"),
    ts("Requests / s by method and code", [("sum by (method, code) (rate(billing_grpc_requests_total[1m]))",
                                             "{{method}} {{code}}")], unit="reqps"),
    ts("Latency by method (p50, p99)", [
        (f"{Q}(0.5, sum by (le, method) (rate(billing_grpc_request_duration_seconds_bucket[5m])))", "p50 {{method}}"),
        (f"{Q}(0.99, sum by (le, method) (rate(billing_grpc_request_duration_seconds_bucket[5m])))", "p99 {{method}}"),
    ], unit="s"),
    ts("Error ratio (codes other than OK, NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, FAILED_PRECONDITION)", [(
        'sum(rate(billing_grpc_requests_total{code!~"OK|NOT_FOUND|ALREADY_EXISTS|INVALID_ARGUMENT|FAILED_PRECONDITION"}[5m]))'
        " / clamp_min(sum(rate(billing_grpc_requests_total[5m])), 1e-9)", "errors")], unit="percentunit", w=24, h=6),

    row("Kafka consumers"),
    ts("Messages / s by group", [("sum by (group) (rate(billing_consumer_messages_total[1m]))", "{{group}}")],
       unit="ops"),
    ts("Batches / s and p99 batch latency", [
        ("sum by (group) (rate(billing_consumer_batches_total[1m]))", "batches/s {{group}}"),
        (f"{Q}(0.99, sum by (le, group) (rate(billing_consumer_batch_duration_seconds_bucket[5m])))",
         "p99 s {{group}}"),
    ]),
    ts("Lag by partition (messages behind)", [
        ("max by (group, topic, partition) (billing_consumer_lag_messages)", "{{group}} {{topic}}[{{partition}}]")],
       description="High watermark minus the next offset stored in PostgreSQL; each partition reported by its owner."),
    ts("Total lag by group", [("sum by (group) (max by (group, topic, partition) (billing_consumer_lag_messages))",
                               "{{group}}")]),
    ts("Dead letters / s by group and reason", [
        ("sum by (group, reason) (rate(billing_consumer_dead_letters_total[5m]))", "{{group}} {{reason}}")],
       unit="ops", stack=True),
    ts("Usage: dedup hits and late events / s", [
        ("sum by (group) (rate(billing_consumer_dedup_hits_total[5m]))", "dedup hits {{group}}"),
        ("sum(rate(billing_usage_late_events_total[5m]))", "late usage events"),
    ], unit="ops"),

    row("Outbox"),
    ts("Backlog (unpublished rows) and age of the oldest", [
        ("max(billing_outbox_backlog_rows)", "rows"),
        ("max(billing_outbox_oldest_unpublished_age_seconds)", "oldest age (s)"),
    ]),
    ts("Published / s and publish latency (p50, p99)", [
        ("sum(rate(billing_outbox_published_total[1m]))", "rows/s"),
        (f"{Q}(0.5, sum by (le) (rate(billing_outbox_publish_duration_seconds_bucket[5m])))", "p50 s"),
        (f"{Q}(0.99, sum by (le) (rate(billing_outbox_publish_duration_seconds_bucket[5m])))", "p99 s"),
    ]),
    ts("Delivery delay: written to confirmed by Kafka (p50, p99)", [
        (f"{Q}(0.5, sum by (le) (rate(billing_outbox_delivery_delay_seconds_bucket[5m])))", "p50"),
        (f"{Q}(0.99, sum by (le) (rate(billing_outbox_delivery_delay_seconds_bucket[5m])))", "p99"),
    ], unit="s", w=24, h=6),
    stat("Parked rows (not released)", "max(billing_outbox_parked_rows)", w=6, h=8,
         thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
         description="Rows Kafka refused for good, kept unpublished until released; later rows of the same "
                     "stream and key wait behind them. See docs/operations.md, Parked outbox rows."),
    ts("Parked rows / s by reason", [
        ("sum by (reason) (rate(billing_outbox_parked_total[5m]))", "{{reason}}")], unit="ops", w=18, stack=True,
       description="message_too_large: over message.max.bytes or the topic's max.message.bytes even sent alone; "
                   "invalid_record: the broker refuses the record itself."),

    row("Usage alerts"),
    ts("Threshold alerts / s", [("sum(rate(billing_usage_alerts_total[5m]))", "alerts/s")], unit="ops", w=8,
       description="usage.threshold_crossed alerts written to the outbox by usage batches (docs/alerts.md); "
                   "they reach billing.usage-alerts.v1 through the relay."),
    ts("What delays an alert: usage consumer lag and batch p99", [
        ('sum(max by (topic, partition) (billing_consumer_lag_messages{group="billing-usage"}))', "messages behind"),
        (f'{Q}(0.99, sum by (le) (rate(billing_consumer_batch_duration_seconds_bucket{{group="billing-usage"}}[5m])))',
         "batch p99 s"),
    ], w=8, description="An alert is written in the transaction of the usage batch that crosses its threshold: "
                        "events behind in the usage topic and long batches delay it."),
    ts("Outbox delivery delay p99 (all streams, alerts included)", [
        (f"{Q}(0.99, sum by (le) (rate(billing_outbox_delivery_delay_seconds_bucket[5m])))", "p99"),
        ("max(billing_outbox_oldest_unpublished_age_seconds)", "oldest unpublished (s)"),
    ], unit="s", w=8, description="From the batch's transaction to Kafka confirming the alert (the relay wakes "
                                  "on NOTIFY); the oldest unpublished row's age grows when the relay is stuck."),

    row("Billing runs"),
    ts("Runs by status / h", [("sum by (status) (increase(billing_runs_total[1h]))", "{{status}}")], w=8),
    ts("Run duration (p50, p95)", [
        (f"{Q}(0.5, sum by (le) (rate(billing_run_duration_seconds_bucket[1h])))", "p50"),
        (f"{Q}(0.95, sum by (le) (rate(billing_run_duration_seconds_bucket[1h])))", "p95"),
    ], unit="s", w=8),
    ts("Subscriptions by outcome / h", [
        ("sum by (outcome) (increase(billing_subscriptions_total[1h]))", "{{outcome}}")], w=8),
    ts("Amount billed and credited per currency / h", [
        ("sum by (currency) (increase(billing_amount_billed_total[1h]))", "{{currency}} billed"),
        ("sum by (currency) (increase(billing_amount_credited_total[1h]))", "{{currency}} credited")], w=8, h=6,
       description="Credited: invoice requests whose total is negative (credit above the charges), as a positive "
                   "amount."),
    ts("Invoice requests by source / h", [
        ("sum by (source) (increase(billing_invoice_requests_total[1h]))", "{{source}}")], w=8, h=6,
       description="run: billing runs; change: a subscription change (a period it closed first, a final or "
                   "immediate invoice)."),
    ts("Paused subscriptions resumed as scheduled / h", [
        ("sum by (outcome) (increase(billing_subscriptions_auto_resumed_total[1h]))", "{{outcome}}")], w=8, h=6,
       description="The scheduler role's automatic resumes at pause_resumes_at; failed ones are retried next pass."),

    row("Database"),
    ts("Pool connections by replica", [
        ("billing_db_pool_connections_in_use", "in use {{instance}}"),
        ("billing_db_pool_connections", "open {{instance}}"),
        ("billing_db_pool_connections_max", "max {{instance}}"),
    ], w=24),
]


def layout(items):
    x = y = row_h = 0
    pid = 1
    for p in items:
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        if p["type"] == "row" and x:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = pid
        pid += 1
        x += w
        row_h = max(row_h, h)
        if x >= 24:
            x, y, row_h = 0, y + row_h, 0
    return items


dashboard = {
    "uid": "billing-service",
    "title": "Billing service",
    "tags": ["billing"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "panels": layout(panels),
    "templating": {"list": []},
    "annotations": {"list": []},
}

if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard, indent=2) + "\n")
    print(f"wrote {OUT} ({len(dashboard['panels'])} panels)")

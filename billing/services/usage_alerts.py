"""Usage alerts (docs/alerts.md): after a usage batch has folded its events into the
period totals, the thresholds it crossed are recorded and announced, in the batch's own
transaction.

The crossing row (usage_threshold_crossings, keyed by threshold and period) and the
alert's outbox row (stream `usage_alerts`, topic billing.usage-alerts.v1) commit with the
events that crossed it, or not at all: a replayed or duplicated event folds nothing new,
a crashed batch commits nothing, and a crossing already recorded is not recorded again,
so each (threshold, period) is announced exactly once. A late event is attributed to its
own period (usage_rules.attribute) and so crosses that period's thresholds.
"""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from billing import codec
from billing.domain.events import EventType, Stream
from billing.domain.money import decimal_to_str
from billing.domain.periods import to_us
from billing.domain.thresholds import alert_id
from billing.ops.metrics import USAGE_ALERTS
from billing.services import amount_thresholds
from billing.store import outbox
from billing.store import usage as usage_store
from billing.store.db import json_text

STREAM = Stream.USAGE_ALERTS
_CONTENT_TYPE = codec.content_type(codec.Schema.USAGE_ALERT)


async def after_batch(conn: asyncpg.Connection, tenant_id: uuid.UUID, stored: usage_store.Stored) -> int:
    """Announce the thresholds crossed by a tenant's batch just stored: the quantity
    thresholds its statement recorded as crossed (store/usage.store_batch), and the amount
    thresholds of its subscriptions, priced and recorded here (services/amount_thresholds.py).
    Returns how many alerts were written."""
    crossed = stored.crossings
    amounts = await amount_thresholds.check(conn, tenant_id, stored.amount_thresholds) \
        if stored.amount_thresholds else []
    if not crossed and not amounts:
        return 0
    out: list[tuple[str, bytes | None, bytes, str]] = []
    for c in crossed:
        out.append(_row(tenant_id, c["id"], c["key"], c["subscription_id"], c["plan_level"], {
            "metric_code": c["metric_code"], "threshold_value": decimal_to_str(c["value"]),
            "quantity": decimal_to_str(c["quantity"]), "recurring": c["recurring"],
            "period_start_us": to_us(c["period_start"]), "period_end_us": to_us(c["period_end"]),
            "crossed_at_us": to_us(c["crossed_at"])}))
    for a in amounts:
        out.append(_row(tenant_id, a.threshold_id, a.key, a.subscription_id, a.plan_level, {
            "metric_code": "", "threshold_value": decimal_to_str(a.value), "quantity": decimal_to_str(a.amount),
            "recurring": a.recurring, "period_start_us": to_us(a.period_start), "period_end_us": to_us(a.period_end),
            "crossed_at_us": to_us(a.crossed_at), "measure": "amount", "currency": a.currency,
            "invoice_request_id": str(a.invoice_request_id) if a.invoice_request_id else None}))
    await outbox.enqueue_many(conn, tenant_id, out)
    USAGE_ALERTS.inc(len(out))
    return len(out)


def _row(tenant_id: uuid.UUID, threshold_id: uuid.UUID, key: datetime, subscription_id: uuid.UUID,
         plan_level: bool, fields: dict) -> tuple[str, bytes | None, bytes, str]:
    """The outbox row of one alert: the UsageAlert record of a crossing and its headers."""
    ident = str(alert_id(threshold_id, key, subscription_id if plan_level else None))
    record = {"alert_id": ident, "type": EventType.THRESHOLD_CROSSED.value, "tenant_id": str(tenant_id),
              "subscription_id": str(subscription_id), "threshold_id": str(threshold_id), **fields}
    headers = {"content-type": _CONTENT_TYPE, "event-type": EventType.THRESHOLD_CROSSED.value, "alert-id": ident}
    return (STREAM.value, str(subscription_id).encode(), codec.encode(codec.Schema.USAGE_ALERT, record),
            json_text(headers))

"""The names the service publishes: outbox streams and event types.

A stream is the logical name an outbox row is written under; the relay maps each to its
configured topic (producers/outbox_relay.py), so the services never see topic settings.
An event type is the `type` of a subscription event and the `action` of its audit row.
Both are `StrEnum`s: their members are the strings stored and published.
"""
from __future__ import annotations

from enum import StrEnum

__all__ = ["EventType", "Stream"]


class Stream(StrEnum):
    SUBSCRIPTION_EVENTS = "subscription_events"
    INVOICE_REQUESTS = "invoice_requests"
    BILLING_RUNS = "billing_runs"
    USAGE_ALERTS = "usage_alerts"


class EventType(StrEnum):
    CREATED = "subscription.created"
    ACTIVATED = "subscription.activated"
    TRIAL_STARTED = "subscription.trial_started"
    TRIAL_ENDED = "subscription.trial_ended"
    PAUSED = "subscription.paused"
    RESUMED = "subscription.resumed"
    CANCEL_SCHEDULED = "subscription.cancel_scheduled"
    CANCEL_UNSCHEDULED = "subscription.cancel_unscheduled"
    CANCELED = "subscription.canceled"
    PLAN_CHANGE_SCHEDULED = "subscription.plan_change_scheduled"
    PLAN_CHANGE_WITHDRAWN = "subscription.plan_change_withdrawn"
    PLAN_CHANGED = "subscription.plan_changed"
    PERIOD_ADVANCED = "subscription.period_advanced"
    LATE_USAGE_BILLED = "subscription.late_usage_billed"  # an audit action only
    COMMAND_REJECTED = "command.rejected"
    # Prepaid credit grants (docs/billing.md, "Credits"): on the subscription events topic,
    # keyed by the subscription (the customer for a customer-wide grant's own events).
    CREDIT_GRANTED = "credit.granted"
    CREDIT_APPLIED = "credit.applied"
    CREDIT_DEPLETED = "credit.depleted"
    CREDIT_EXPIRED = "credit.expired"
    CREDIT_VOIDED = "credit.voided"
    # What a subscription may use changed (docs/entitlements.md); data: plan_id, entitled,
    # cause_event, old_plan_id on a plan change.
    ENTITLEMENTS_CHANGED = "entitlements.changed"
    # A usage threshold crossed (docs/alerts.md): on the usage alerts topic, not an audit action.
    THRESHOLD_CROSSED = "usage.threshold_crossed"

"""Prometheus metrics. Label sets are bounded: method and code, never tenant or ids."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

GRPC_REQUESTS = Counter(
    "billing_grpc_requests_total", "gRPC requests handled, by method and status code", ["method", "code"]
)
GRPC_LATENCY = Histogram(
    "billing_grpc_request_duration_seconds", "gRPC request latency, by method", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READY = Gauge("billing_ready", "1 when PostgreSQL, Kafka and migrations are all ready", [])
DEPENDENCY_UP = Gauge("billing_dependency_up", "1 when the dependency answered the last check", ["dependency"])

CONSUMER_MESSAGES = Counter(
    "billing_consumer_messages_total", "Kafka messages committed by a consumer (dead letters included)", ["group"]
)
CONSUMER_DEAD_LETTERS = Counter("billing_consumer_dead_letters_total", "Messages sent to a dead-letter topic", ["group"])
CONSUMER_BATCH_SECONDS = Histogram(
    "billing_consumer_batch_duration_seconds", "Time to process and commit one batch", ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_PUBLISHED = Counter("billing_outbox_published_total", "Outbox rows published to Kafka and marked", [])
OUTBOX_PUBLISH_SECONDS = Histogram(
    "billing_outbox_publish_duration_seconds", "From the first produce of a relay batch to its rows being marked", [],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def consumer_batch_observer(group: str):
    """The runner's on_batch hook, recording into the metrics above (label: the group only)."""
    messages, dead, seconds = (CONSUMER_MESSAGES.labels(group), CONSUMER_DEAD_LETTERS.labels(group),
                               CONSUMER_BATCH_SECONDS.labels(group))

    def observe(committed: int, dead_letters: int, took_s: float) -> None:
        messages.inc(committed)
        dead.inc(dead_letters)
        seconds.observe(took_s)

    return observe


def outbox_observer(count: int, took_s: float) -> None:
    OUTBOX_PUBLISHED.inc(count)
    OUTBOX_PUBLISH_SECONDS.observe(took_s)

# -- billing runs (billing.services.billing) ---------------------------------------------
BILLING_RUNS = Counter(
    "billing_runs_total", "Billing runs by the status they reached (pending: requested)", ["status"]
)
BILLING_RUN_SECONDS = Histogram(
    "billing_run_duration_seconds", "From a billing run's start to its completion", [],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
BILLING_SUBSCRIPTIONS = Counter(
    "billing_subscriptions_total", "Subscriptions handled by billing runs, by outcome (billed, skipped, failed)",
    ["outcome"],
)
BILLING_AMOUNT = Counter(
    "billing_amount_billed_total",
    "Invoice request totals billed, in the currency's major unit (a float: for dashboards, not accounting)",
    ["currency"],
)

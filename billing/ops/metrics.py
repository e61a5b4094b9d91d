"""Prometheus metrics. Label sets are bounded: method and code, never tenant or ids.

The list with what each metric means is in docs/operations.md; keep the two in step.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

GRPC_REQUESTS = Counter(
    "billing_grpc_requests_total", "gRPC requests handled, by method and status code", ["method", "code"]
)
GRPC_LATENCY = Histogram(
    "billing_grpc_request_duration_seconds", "gRPC request latency, by method", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GRPC_IN_FLIGHT = Gauge(
    "billing_grpc_calls_in_flight", "gRPC calls being handled now (bounded by BILLING_GRPC_MAX_CONCURRENT_CALLS)", []
)
ENTITLEMENT_STATEMENTS = Counter(
    "billing_entitlement_check_statements_total", "Statements run for CheckEntitlement (one per group of checks)", []
)
ENTITLEMENT_CHECKS_GROUPED = Counter(
    "billing_entitlement_checks_grouped_total", "CheckEntitlement checks answered by those statements", []
)
READY = Gauge("billing_ready", "1 when PostgreSQL, Kafka and migrations are all ready", [])
DEPENDENCY_UP = Gauge("billing_dependency_up", "1 when the dependency answered the last check", ["dependency"])

CONSUMER_MESSAGES = Counter(
    "billing_consumer_messages_total", "Kafka messages committed by a consumer (dead letters included)", ["group"]
)
CONSUMER_DEAD_LETTERS = Counter(
    "billing_consumer_dead_letters_total", "Messages sent to a dead-letter topic, by reason code", ["group", "reason"]
)
CONSUMER_BATCHES = Counter("billing_consumer_batches_total", "Batches committed by a consumer", ["group"])
CONSUMER_DEDUP_HITS = Counter(
    "billing_consumer_dedup_hits_total",
    "Messages whose effect was already recorded (usage events already seen), skipped", ["group"],
)
USAGE_LATE_EVENTS = Counter(
    "billing_usage_late_events_total", "Usage events counted for a period that was already billed", []
)
CONSUMER_LAG = Gauge(
    "billing_consumer_lag_messages",
    "Messages behind the partition's high watermark (stored offset in PostgreSQL), per assigned partition",
    ["group", "topic", "partition"],
)
CONSUMER_BATCH_SECONDS = Histogram(
    "billing_consumer_batch_duration_seconds", "Time to process and commit one batch", ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Per batch, at its processing start: where an event's time goes before its transaction
# (a threshold alert's lag, docs/alerts.md#alert-lag).
CONSUMER_BATCH_WAIT = Histogram(
    "billing_consumer_batch_wait_seconds",
    "From a batch's first message fetched to the batch's processing start (the batch window, the batch ahead)",
    ["group"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_BATCH_AGE = Histogram(
    "billing_consumer_batch_age_seconds",
    "Age of a batch's first message (its Kafka timestamp) at the batch's processing start: the consumer's lag in time",
    ["group"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
OUTBOX_PUBLISHED = Counter("billing_outbox_published_total", "Outbox rows published to Kafka and marked", [])
OUTBOX_BACKLOG = Gauge("billing_outbox_backlog_rows", "Outbox rows not published yet, over the whole database", [])
OUTBOX_OLDEST_AGE = Gauge(
    "billing_outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row (0 when none)", []
)
OUTBOX_DELAY = Histogram(
    "billing_outbox_delivery_delay_seconds",
    "From an outbox row's transaction to its publication confirmed by Kafka (how long events wait)", [],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
OUTBOX_PARKED = Counter(
    "billing_outbox_parked_total", "Outbox rows Kafka refused for good, parked unpublished (reason: message_too_large, "
    "invalid_record)", ["reason"],
)
OUTBOX_PARKED_ROWS = Gauge(
    "billing_outbox_parked_rows", "Parked outbox rows not released yet, over the whole database", []
)
OUTBOX_LEADER = Gauge("billing_outbox_relay_leader", "1 while this process's relay is the leader of its group", [])
OUTBOX_PUBLISH_SECONDS = Histogram(
    "billing_outbox_publish_duration_seconds", "From the first produce of a relay batch to its rows being marked", [],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")


def reason_label(reason: str) -> str:
    """Dead-letter reasons are short codes of a fixed set; anything else counts as "other",
    so a strategy that put free text in a reason cannot blow up the label set."""
    return reason if _REASON.fullmatch(reason or "") else "other"


class ConsumerMetrics:
    """The runner's observer (consumers.runner.RunnerObserver) for one consumer group."""

    def __init__(self, group: str, dead_letter_reasons: tuple[str, ...] = ()):
        self.group = group
        self._messages = CONSUMER_MESSAGES.labels(group)
        self._batches = CONSUMER_BATCHES.labels(group)
        self._seconds = CONSUMER_BATCH_SECONDS.labels(group)
        self._wait = CONSUMER_BATCH_WAIT.labels(group)
        self._age = CONSUMER_BATCH_AGE.labels(group)
        self._dedup = CONSUMER_DEDUP_HITS.labels(group)
        # The series exist (at 0) before the first dead letter: rate()/increase() see the
        # first one, and alerts on them can fire (a series born at 1 shows no increase).
        for reason in ("undecodable", *dead_letter_reasons):
            CONSUMER_DEAD_LETTERS.labels(group, reason_label(reason))

    def batch(self, messages: int, dead_letters: Mapping[str, int], counters: Mapping[str, int],
              seconds: float) -> None:
        self._messages.inc(messages)
        self._batches.inc()
        self._seconds.observe(seconds)
        for reason, count in dead_letters.items():
            CONSUMER_DEAD_LETTERS.labels(self.group, reason_label(reason)).inc(count)
        if counters.get("duplicates"):
            self._dedup.inc(counters["duplicates"])
        if counters.get("late"):
            USAGE_LATE_EVENTS.inc(counters["late"])

    def waited(self, fetched_s: float | None, age_s: float | None) -> None:
        """A batch starts: since its first message was fetched, and that message's age."""
        if fetched_s is not None:
            self._wait.observe(max(0.0, fetched_s))
        if age_s is not None:
            self._age.observe(max(0.0, age_s))

    def lag(self, topic: str, partition: int, messages: int) -> None:
        CONSUMER_LAG.labels(self.group, topic, str(partition)).set(max(0, messages))

    def forget(self, topic: str, partition: int) -> None:
        """The partition went to another consumer: its series leaves this process."""
        try:
            CONSUMER_LAG.remove(self.group, topic, str(partition))
        except KeyError:
            pass


class _PoolCollector:
    """asyncpg pool usage, read at scrape time from every open pool of this process."""

    def __init__(self):
        self.pools: list = []  # asyncpg pools take no weak references; closed ones are dropped here

    def collect(self):
        size = idle = maximum = 0
        self.pools = [p for p in self.pools if not p.is_closing()]
        for pool in self.pools:
            size += pool.get_size()
            idle += pool.get_idle_size()
            maximum += pool.get_max_size()
        yield GaugeMetricFamily("billing_db_pool_connections", "Open connections of the database pool", value=size)
        yield GaugeMetricFamily("billing_db_pool_connections_in_use",
                                "Pool connections acquired by a request, batch or task", value=size - idle)
        yield GaugeMetricFamily("billing_db_pool_connections_max", "The pool's maximum size", value=maximum)


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def track_pool(pool) -> None:
    _POOLS.pools.append(pool)


def outbox_delays(delays: list[tuple[float, int]]) -> None:
    """(delay, rows) pairs: one per writing time of a relay batch, not one per row."""
    for delay, rows in delays:
        observe_many(OUTBOX_DELAY, max(0.0, delay), rows)


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """`count` observations of the same `amount` in one step: what `count` calls of
    `observe` record, without the per-call cost (a relay batch delivers a thousand rows
    written at one time). Falls back to those calls if the client library's layout changes."""
    bounds, buckets, total = (getattr(histogram, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or count < 1:
        for _ in range(count):
            histogram.observe(amount)
        return
    total.inc(amount * count)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            buckets[i].inc(count)
            break


def outbox_parked(reason: str) -> None:
    OUTBOX_PARKED.labels(reason_label(reason)).inc()


def outbox_observer(count: int, took_s: float) -> None:
    OUTBOX_PUBLISHED.inc(count)
    OUTBOX_PUBLISH_SECONDS.observe(took_s)

# -- billing runs (billing.services.run_execution, billing_runs) ---------------------------------------------
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
    "Totals of the invoice requests with a total >= 0, by runs and by changes, in the currency's major unit "
    "(a float: for dashboards, not accounting)",
    ["currency"],
)
BILLING_CREDITED = Counter(
    "billing_amount_credited_total",
    "Totals of the invoice requests with a negative total (credit above the charges), as a positive amount in "
    "the currency's major unit; billed minus credited is the net invoiced",
    ["currency"],
)
INVOICE_REQUESTS = Counter(
    "billing_invoice_requests_total",
    "Invoice requests committed to the outbox, by what wrote them: run (a billing run), change (a subscription "
    "change: a period it closed first, an immediate cancel, a proration invoiced now)",
    ["source"],
)

# -- usage alerts (billing.services.usage_alerts) ----------------------------------------
USAGE_ALERTS = Counter(
    "billing_usage_alerts_total",
    "Threshold alerts (usage.threshold_crossed) written to the outbox by usage batches; counted when written, so "
    "a batch rolled back and retried counts again (the topic and usage_threshold_crossings are the record)", [],
)

# -- automatic resumption (billing.services.scheduler) -----------------------------------
AUTO_RESUMED = Counter(
    "billing_subscriptions_auto_resumed_total",
    "Paused subscriptions the scheduler resumed at their pause_resumes_at, by outcome (resumed, failed)",
    ["outcome"],
)


def _failure_series_at_zero() -> None:
    """Create the failure series with their known label values at import, so a fresh process's
    /metrics shows them at 0 and `increase(...) > 0` alerts fire on the first failure.
    (Dead letters per group: ConsumerMetrics; gRPC codes per method: the interceptor.)"""
    for status in ("pending", "completed", "failed"):
        BILLING_RUNS.labels(status)
    for outcome in ("billed", "skipped", "failed"):
        BILLING_SUBSCRIPTIONS.labels(outcome)
    for outcome in ("resumed", "failed"):
        AUTO_RESUMED.labels(outcome)
    for reason in ("message_too_large", "invalid_record"):
        OUTBOX_PARKED.labels(reason)


_failure_series_at_zero()

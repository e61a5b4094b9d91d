"""The threshold alert lag of bench/entitlements.py (issue 23): usage event produced ->
`usage.threshold_crossed` read from billing.usage-alerts.v1.

Subscriptions of their own (not in the bulk load's file, so their totals are only the
probe's), each with recurring thresholds on `calls` at every `step` units. The probe
produces one event of quantity 1 at a time, round-robin over them, at `rate` events/s to
billing.usage.v1 (the same topic, partitions and usage consumer as the bulk load), and
notes the wall-clock time just before producing the event that brings a subscription's
total to a threshold: that event crosses it. A reader (a Kafka consumer with a group of
its own, the Avro decoder) notes each alert's arrival; lag = arrival - produced. The
alert's `crossed_at_us` (the crossing batch's transaction time) splits it into the
usage side (produced -> the batch that crossed it: the consumer's backlog and batching)
and the alert side (-> the outbox, the relay, the topic, the reader).

Stages, per alert (`stages`): `to_batch` produced -> the crossing batch's transaction
start (`crossed_at_us`); `batch` -> that transaction's commit (the crossing row's
pg_xact_commit_timestamp: the bench's PostgreSQL runs with track_commit_timestamp);
`to_relay` -> the relay's produce (the alert's Kafka timestamp, CreateTime, set by the
relay's producer); `to_reader` -> read by the bench's consumer (the relay's linger and
acks, the fetch).
"""
from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone

import asyncpg

from bench.fixtures import copy_rows
from bench.load import percentile
from billing import codec
from billing.config import Settings
from billing.kafka import consumer_config, producer_config
from billing.store.db import init_connection

MAX_THRESHOLDS = 50  # per subscription, as CreateThreshold allows


def histogram_means(http_port: int, names: tuple[str, ...]) -> dict[str, float | None]:
    """Mean seconds of these histograms on a role's /metrics (all label sets together): where
    the alert side's time goes (the usage batch; the relay's row written -> confirmed)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        for name in names:
            for part in ("_sum", "_count"):
                if line.startswith(name + part):
                    sums[name + part] = sums.get(name + part, 0.0) + float(line.rsplit(" ", 1)[1])
    return {n: round(sums[n + "_sum"] / sums[n + "_count"] * 1000, 1) if sums.get(n + "_count") else None
            for n in names}


def wait_assigned(http_port: int, group: str = "billing-usage", timeout_s: float = 90) -> None:
    """Until the consumer role on `http_port` has partitions (its lag gauge has a series per
    assigned partition): a probe started before would time the group's join, not the path."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    needle = f'billing_consumer_lag_messages{{group="{group}"'
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
                if needle in resp.read().decode():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the consumer group {group} got no partitions within {timeout_s:.0f}s")


async def statements_per_batch(dsn: str) -> str:
    """The top statements by total time (pg_stat_statements), per usage batch: the offsets'
    upsert counts the batches."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) as q "
            "from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database()) "
            "order by total_exec_time desc limit 12")
        batches = await conn.fetchval(
            "select max(calls) from pg_stat_statements where query ilike '%insert into consumer_offsets%'") or 1
    finally:
        await conn.close()
    lines = [f"statements per usage batch ({batches} batches): ms, calls, query"]
    lines += [f"{r['total_exec_time'] / batches:8.2f} {r['calls'] / batches:6.2f} {r['q']}" for r in rows]
    return "\n".join(lines)


class AlertProbe:
    def __init__(self, settings: Settings, tenant_id: str, subs: list[str], step: int, rate: float):
        self.settings = settings
        self.tenant_id = tenant_id
        self.subs = subs
        self.step = step
        self.rate = rate
        self.thresholds: dict[tuple[str, int], str] = {}  # (subscription, value) -> threshold id
        self.produced: dict[str, tuple[float, str]] = {}  # threshold id -> (wall time produced, phase)
        self.arrived: dict[str, tuple[float, float]] = {}  # threshold id -> (wall time read, crossed_at)
        self.relayed: dict[str, float] = {}  # threshold id -> the alert's Kafka timestamp (the relay's produce)
        self.committed: dict[str, float] = {}  # threshold id -> the crossing batch's commit (load_commit_times)
        self.repeats = 0  # alerts read twice (a relay re-publish would do it)
        self._sent = dict.fromkeys(subs, 0)
        self._stop_reader = threading.Event()
        self._reader: threading.Thread | None = None
        self._assigned = threading.Event()

    async def create_thresholds(self) -> int:
        """Recurring thresholds at step, 2 * step, ... on every probe subscription, straight
        into the table as the owner (as the bench writes its subscriptions)."""
        rows = []
        tenant = uuid.UUID(self.tenant_id)
        for sub in self.subs:
            for k in range(1, MAX_THRESHOLDS + 1):
                tid = uuid.uuid4()
                self.thresholds[(sub, k * self.step)] = str(tid)
                rows.append((tenant, tid, uuid.UUID(sub), "calls", "quantity_sum", k * self.step, True))
        await write_thresholds(self.settings, rows)
        return len(rows)

    # -- the reader ----------------------------------------------------------------------

    def start_reader(self, timeout_s: float = 60) -> None:
        self._reader = threading.Thread(target=self._read, name="alert-reader", daemon=True)
        self._reader.start()
        if not self._assigned.wait(timeout_s):
            raise RuntimeError(f"the alert reader got no partitions within {timeout_s:.0f}s")

    def _read(self) -> None:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer

        consumer = Consumer(consumer_config(self.settings, f"bench-alerts-{uuid.uuid4()}",
                                            **{"auto.offset.reset": "earliest"}))
        consumer.subscribe([self.settings.topics.usage_alerts], on_assign=lambda c, parts: self._assigned.set())
        try:
            while not self._stop_reader.is_set():
                # poll(), not consume(n, timeout): consume waits for n messages or the
                # timeout, and every alert of a quiet topic would read as the timeout late.
                msg = consumer.poll(0.1)
                now = time.time()
                if msg is None or msg.error() is not None:
                    continue
                alert = codec.decode(codec.Schema.USAGE_ALERT, msg.value())
                tid = alert["threshold_id"]
                if tid in self.arrived:
                    self.repeats += 1
                else:
                    self.arrived[tid] = (now, alert["crossed_at_us"] / 1e6)
                    ts_type, ts_ms = msg.timestamp()
                    if ts_type != TIMESTAMP_NOT_AVAILABLE:
                        self.relayed[tid] = ts_ms / 1000
        finally:
            consumer.close()

    def stop_reader(self) -> None:
        self._stop_reader.set()
        if self._reader is not None:
            self._reader.join(timeout=30)

    async def load_commit_times(self) -> None:
        """When each crossing's batch committed: needs track_commit_timestamp on the server
        (none otherwise, and the stages are left out)."""
        admin = await asyncpg.connect(self.settings.admin_database_url)
        try:
            rows = await admin.fetch(
                "select threshold_id, extract(epoch from pg_xact_commit_timestamp(xmin))::float8 as at "
                "from usage_threshold_crossings where tenant_id = $1", uuid.UUID(self.tenant_id))
        finally:
            await admin.close()
        self.committed = {str(r["threshold_id"]): r["at"] for r in rows if r["at"] is not None}

    # -- the probe -----------------------------------------------------------------------

    def run(self, seconds: float, phase: str) -> None:
        """Produce for `seconds` (blocking; run it in a thread)."""
        from confluent_kafka import Producer

        producer = Producer(producer_config(self.settings))
        topic = self.settings.topics.usage
        started = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - started) < seconds:
            sub = self.subs[n % len(self.subs)]
            n += 1
            self._sent[sub] += 1
            total = self._sent[sub]
            value = codec.encode(codec.Schema.USAGE_EVENT, {
                "event_id": str(uuid.uuid4()), "tenant_id": self.tenant_id, "subscription_id": sub,
                "metric_code": "calls", "quantity": "1",
                "occurred_at_us": int(datetime.now(timezone.utc).timestamp() * 1e6), "properties": {}})
            tid = self.thresholds.get((sub, total)) if total % self.step == 0 else None
            if tid is not None:
                self.produced[tid] = (time.time(), phase)
            producer.produce(topic, key=sub.encode(), value=value)
            producer.poll(0)
            ahead = n / self.rate - elapsed
            if ahead > 0:
                time.sleep(ahead)
        if producer.flush(60):
            raise RuntimeError("the alert probe's events were not all confirmed within 60 s")

    def wait_for_alerts(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(t not in self.arrived for t in self.produced) and time.monotonic() < deadline:
            time.sleep(0.2)

    def summary(self, phase: str) -> dict:
        mine = [t for t, (_, p) in self.produced.items() if p == phase]
        got = [t for t in mine if t in self.arrived]
        lags = [(self.arrived[t][0] - self.produced[t][0]) * 1000 for t in got]
        usage_side = [(self.arrived[t][1] - self.produced[t][0]) * 1000 for t in got]
        alert_side = [(self.arrived[t][0] - self.arrived[t][1]) * 1000 for t in got]

        def pcts(values: list[float]) -> dict:
            return {"p50_ms": round(percentile(values, 50), 1), "p99_ms": round(percentile(values, 99), 1),
                    "max_ms": round(max(values), 1) if values else None}
        timed = [t for t in got if t in self.committed and t in self.relayed]
        stages = self._stages(timed) if timed else None
        # Where the slowest tenth of the alerts spent their time (mean per stage).
        timed.sort(key=lambda t: self.arrived[t][0] - self.produced[t][0])
        tail = {k: v["mean_ms"] for k, v in self._stages(timed[len(timed) * 9 // 10:]).items()} if timed else None
        return {"crossings": len(mine), "alerts": len(got), "missing": len(mine) - len(got), "lag": pcts(lags),
                "usage_side": pcts(usage_side), "alert_side": pcts(alert_side), "stages": stages,
                "slowest_tenth_mean_ms": tail}

    def stage_line(self, phase: str) -> str:
        """One line for stderr: the p50 / p99 of each stage of a phase's alerts."""
        s = self.summary(phase)
        stages = " ".join(f"{k}={v['p50_ms']:.0f}/{v['p99_ms']:.0f}" for k, v in (s["stages"] or {}).items())
        return f"alert lag {phase}: p50/p99 ms {s['lag']['p50_ms']:.0f}/{s['lag']['p99_ms']:.0f}: {stages}"

    def _stages(self, tids: list[str]) -> dict:
        """Per stage (module docstring): p50, p99 and mean in ms over these alerts."""
        produced, arrived, committed, relayed = self.produced, self.arrived, self.committed, self.relayed
        spans = {
            "to_batch": [arrived[t][1] - produced[t][0] for t in tids],
            "batch": [committed[t] - arrived[t][1] for t in tids],
            "to_relay": [relayed[t] - committed[t] for t in tids],
            "to_reader": [arrived[t][0] - relayed[t] for t in tids],
        }
        return {k: {"p50_ms": round(percentile([x * 1000 for x in v], 50), 1),
                    "p99_ms": round(percentile([x * 1000 for x in v], 99), 1),
                    "mean_ms": round(sum(v) / len(v) * 1000, 1) if v else None} for k, v in spans.items()}


async def write_thresholds(settings, rows: list[tuple]) -> None:
    """Quantity thresholds (tenant, id, subscription, metric, measure, value, recurring), COPYed."""
    admin = await asyncpg.connect(settings.admin_database_url)
    try:
        await init_connection(admin)
        await copy_rows(admin, "usage_thresholds",
                        ["tenant_id", "id", "subscription_id", "metric_code", "measure", "value", "recurring"], rows)
    finally:
        await admin.close()

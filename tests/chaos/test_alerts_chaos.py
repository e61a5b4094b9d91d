"""Usage alerts exactly once with the usage consumer SIGKILLed mid-stream (issue 23,
docs/alerts.md "Guarantees under crashes").

    .venv/bin/python -m pytest -s tests/chaos/test_alerts_chaos.py     # bounded: 3 kills, ~1 min
    make test-chaos-alerts ALERTS_CHAOS_KILLS=10 CHAOS_ROUNDS=3       # longer; CHAOS_SEED replays

The suite's PostgreSQL and Kafka (nothing here restarts them), topics of the round's own
(usage, its DLQ, alerts) so nothing another test left behind is read, and two
`billing serve` processes: `--roles usage` (SIGKILLed and restarted) and `--roles relay`
(left running: a relay crash may re-publish, which docs/alerts.md allows; that is not what
this test is about). A tenant with subscriptions whose first period is over (a billing run
moved them on), thresholds on them: recurring ones crossed in both periods (the old one
only by late events), a one-off crossed in both (fires once), one never crossed. A stream
of usage events for both periods, in random order, with exact re-sends, is produced at a
steady rate while the consumer is killed several times, each time after it has committed
something since its last start; the stream's last tenth is held back until the kills are
done, so every kill finds the stream unfinished.

Afterwards, read with a Kafka consumer and the Avro decoder: exactly one
`usage.threshold_crossed` per (threshold, period), none for the threshold never crossed,
each alert's quantity between its threshold and the period's final total; in the database
one crossing row per alert; and the usage totals equal the sums over the unique events.
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from billing import codec
from billing.config import Topics
from billing.devstack import free_port
from billing.domain.periods import to_us
from billing.kafka import ensure_topics
from billing.runtime import USAGE_GROUP
from billing.v1 import billing_pb2 as pb
from tests.chaos.harness import RoleProcess
from tests.chaos.test_chaos import read_topic
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_usage_consumer import avro
from tests.kafka_helpers import produce

pytestmark = [pytest.mark.chaos]

KILLS = int(os.environ.get("ALERTS_CHAOS_KILLS", "3"))
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "1"))
SUBSCRIPTIONS = 4
PERIOD_TARGET = 320  # units per (subscription, metric, period): every threshold but NEVER is crossed
RECURRING = ("60", "120", "180", "240", "300")  # on `calls`
GB_RECURRING = "100"
ONCE = "150"
NEVER = "1000000"
DUPLICATE_SHARE = 0.15
SECONDS_PER_KILL = 8.0  # the stream's length per kill: the consumer rejoins in ~6 s, starts in ~2 s
UTC = timezone.utc


def _seed() -> int:
    return int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else random.SystemRandom().randrange(10**6)


def _env(settings, topics: Topics) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "BILLING_DATABASE_URL": settings.database_url, "BILLING_WORKER_DATABASE_URL": settings.worker_database_url,
        "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url,
        "BILLING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "BILLING_KAFKA_REPLICATION_FACTOR": str(settings.kafka_replication_factor),
        "BILLING_KAFKA_MIN_INSYNC_REPLICAS": str(settings.kafka_min_insync_replicas),
        "BILLING_TOPIC_USAGE": topics.usage, "BILLING_TOPIC_USAGE_DLQ": topics.usage_dlq,
        "BILLING_TOPIC_USAGE_ALERTS": topics.usage_alerts,
        # The broker's floor (group.min.session.timeout.ms): a killed consumer's partitions
        # come back to its successor as soon as Kafka allows.
        "BILLING_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "BILLING_LOG_LEVEL": "INFO", "BILLING_SCHEDULER_INTERVAL_S": "0",
        "BILLING_DB_POOL_MIN": "1", "BILLING_DB_POOL_MAX": "4",
    })
    return env


async def _world(stub, tenant, admin_conn, rng: random.Random):
    """Subscriptions (first period over), their thresholds, and the stream of messages."""
    past_start = datetime.now(UTC) - timedelta(days=33)
    plan = (await stub.CreatePlan(plan_request(usage_charges=[
        pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                       unit_price="0.01"),
        pb.UsageCharge(metric_code="gb", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                       unit_price="0.25")], trial_days=0), metadata=tenant.md)).plan
    subs, thresholds, events = [], {}, {}
    for _ in range(SUBSCRIPTIONS):
        sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
            request_id=rid(), customer_id="alerts-chaos", plan_id=plan.id, activate=True, start_at=ts(past_start)),
            metadata=tenant.md)).subscription
        old_start, old_end = sub.current_period_start.ToDatetime(UTC), sub.current_period_end.ToDatetime(UTC)
        # As a billing run would have left it: usage in the first period is late from now on.
        await admin_conn.execute("update subscriptions set current_period_start = $2, current_period_end = $3 "
                                 "where id = $1", uuid.UUID(sub.id), old_end, old_end + timedelta(days=30))
        subs.append((sub.id, old_start, old_end))
        for metric, value, once in ([("calls", v, False) for v in RECURRING]
                                    + [("gb", GB_RECURRING, False), ("calls", ONCE, True), ("calls", NEVER, False)]):
            t = (await stub.CreateThreshold(pb.CreateThresholdRequest(
                request_id=rid(), subscription_id=sub.id, metric_code=metric, value=value, once=once),
                metadata=tenant.md)).threshold
            thresholds[t.id] = (sub.id, metric, Decimal(value), once)
        # Per metric and period, events until the period's total passes every threshold but NEVER.
        now_us = to_us(datetime.now(UTC)) - 120_000_000
        for metric in ("calls", "gb"):
            for lo, hi in ((to_us(old_start), to_us(old_end) - 1), (to_us(old_end), now_us)):
                total = 0
                while total < PERIOD_TARGET:
                    q = rng.randint(1, 12)
                    total += q
                    event_id = f"ac-{uuid.uuid4().hex[:12]}"
                    events[event_id] = (sub.id, metric, q, rng.randint(lo, hi))
    unique = [(s.encode(), avro(tenant.id, s, str(q), at, event_id=e, metric=m)) for e, (s, m, q, at) in events.items()]
    rng.shuffle(unique)  # late and current events interleaved
    stream: list[tuple[bytes, bytes]] = []
    for msg in unique:
        stream.append(msg)
        if rng.random() < DUPLICATE_SHARE:  # an exact re-send, some time later
            stream.insert(rng.randint(len(stream) // 2, len(stream)), stream[rng.randrange(len(stream))])
    return subs, thresholds, events, stream


def _produce_paced(settings, topic: str, stream, seconds: float, stop: threading.Event) -> None:
    chunks = max(1, int(seconds / 0.25))
    size = -(-len(stream) // chunks)
    started = time.monotonic()
    for n in range(chunks):
        if stop.is_set():
            return
        produce(settings, topic, stream[n * size:(n + 1) * size])
        ahead = started + (n + 1) * seconds / chunks - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


async def _consumed(admin_conn, topic: str) -> int:
    return int(await admin_conn.fetchval(
        "select coalesce(sum(next_offset), 0) from consumer_offsets where consumer_group = $1 and topic = $2",
        USAGE_GROUP, topic))


async def _until(what: str, check, timeout_s: float, detail=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{detail()}")
        await asyncio.sleep(0.1)
    return result


async def one_round(seed: int, settings, stub, tenant, admin_conn, log_dir: Path) -> str:
    rng = random.Random(seed)
    started = time.monotonic()
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(usage=f"alerts-chaos.usage.{suffix}", usage_dlq=f"alerts-chaos.usage-dlq.{suffix}",
                    usage_alerts=f"alerts-chaos.alerts.{suffix}")
    s = settings.model_copy(update={"topics": topics})
    await asyncio.to_thread(ensure_topics, s)
    subs, thresholds, events, stream = await _world(stub, tenant, admin_conn, rng)
    env = _env(settings, topics)
    usage, relay = (RoleProcess(role, dict(env, BILLING_HTTP_PORT=str(free_port())), log_dir)
                    for role in ("usage", "relay"))
    kills, mid_stream = 0, 0
    stop = threading.Event()
    producer = None
    try:
        relay.start()
        usage.start()
        # The stream's last tenth waits for the kills: each one finds the stream unfinished.
        cut = len(stream) * 9 // 10
        producer = asyncio.create_task(asyncio.to_thread(
            _produce_paced, s, topics.usage, stream[:cut], KILLS * SECONDS_PER_KILL, stop))
        for _ in range(KILLS):
            before = await _consumed(admin_conn, topics.usage)

            async def progressed(before=before) -> bool:
                assert usage.alive() and relay.alive(), f"a role exited:\n{usage.tail()}\n{relay.tail()}"
                return await _consumed(admin_conn, topics.usage) > before
            # Only a consumer that has committed since its start is killed: each life does work.
            await _until("the usage consumer to commit a batch", progressed, 60, lambda: usage.tail())
            await asyncio.sleep(rng.uniform(0, 0.6))
            usage.kill()
            kills += 1
            mid_stream += int(await _consumed(admin_conn, topics.usage) < len(stream))
            await asyncio.sleep(rng.uniform(0, 1))
            assert relay.alive(), f"the relay died:\n{relay.tail()}"
            usage.start()
        await producer
        await asyncio.to_thread(produce, s, topics.usage, stream[cut:])

        async def all_consumed() -> bool:
            return await _consumed(admin_conn, topics.usage) >= len(stream)
        await _until("the usage consumer to reach the end of the stream", all_consumed, 120, lambda: usage.tail())

        async def all_published() -> bool:
            return await admin_conn.fetchval(
                "select count(*) = 0 from outbox where tenant_id = $1 and stream = 'usage_alerts' "
                "and published_at is null", uuid.UUID(tenant.id))
        await _until("the relay to publish every alert", all_published, 60, lambda: relay.tail())
    finally:
        stop.set()
        if producer is not None and not producer.done():
            await asyncio.gather(producer, return_exceptions=True)
        usage.kill()
        relay.kill()
    assert kills == KILLS and mid_stream == KILLS, f"{kills} kills, {mid_stream} of them before the stream's end"

    # The topic, through a Kafka consumer and the Avro decoder.
    on_topic = await asyncio.to_thread(read_topic, s, topics.usage_alerts)
    alerts = [codec.decode(codec.Schema.USAGE_ALERT, m.value()) for m in on_topic]
    alerts = [a for a in alerts if a["tenant_id"] == tenant.id]
    seen = Counter((a["threshold_id"], a["period_start_us"]) for a in alerts)
    doubled = {k: n for k, n in seen.items() if n > 1}
    assert not doubled, f"alerts on the topic more than once: {doubled}"

    # What must have fired: per subscription, every recurring threshold in both periods, the
    # one-off once (in either period), NEVER not at all.
    final = defaultdict(Decimal)  # (sub, metric, period start us) -> total of the unique events
    starts = {}
    for sub_id, old_start, old_end in subs:
        starts[sub_id] = (to_us(old_start), to_us(old_end))
    for sub_id, metric, q, at in events.values():
        old, cur = starts[sub_id]
        final[(sub_id, metric, cur if at >= cur else old)] += q
    expected = set()
    for tid, (sub_id, _metric, value, once) in thresholds.items():
        if value == Decimal(NEVER):
            assert not any(k[0] == tid for k in seen), f"threshold {value} never crossed, yet alerted"
        elif once:
            fired = [k for k in seen if k[0] == tid]
            assert len(fired) == 1, f"one-off threshold {tid} alerted {len(fired)} times: {fired}"
            expected.add(fired[0])
        else:
            expected |= {(tid, start) for start in starts[sub_id]}
    assert set(seen) == expected, (f"missing {sorted(expected - set(seen))}, "
                                   f"unexpected {sorted(set(seen) - expected)}")
    for a in alerts:
        sub_id, metric, value, once = thresholds[a["threshold_id"]]
        assert (a["subscription_id"], a["metric_code"], a["recurring"]) == (sub_id, metric, not once)
        total = final[(sub_id, metric, a["period_start_us"])]
        assert value <= Decimal(a["quantity"]) <= total, f"alert {a} outside [{value}, {total}]"

    # The database: one crossing row per alert (a one-off's keyed on the epoch), one outbox row each.
    crossings = await admin_conn.fetch(
        "select threshold_id, period_start from usage_threshold_crossings where tenant_id = $1", uuid.UUID(tenant.id))
    assert len(crossings) == len(expected) == len(alerts)
    outbox_rows = await admin_conn.fetchval(
        "select count(*) from outbox where tenant_id = $1 and stream = 'usage_alerts'", uuid.UUID(tenant.id))
    assert outbox_rows == len(expected)

    # Usage: every unique event stored once, the totals exact per period.
    stored = await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1", uuid.UUID(tenant.id))
    assert stored == len(events), f"{stored} events stored of {len(events)} unique"
    rows = await admin_conn.fetch("select subscription_id, metric_code, period_start, quantity_sum, event_count "
                                  "from usage_totals where tenant_id = $1", uuid.UUID(tenant.id))
    got = {(str(r["subscription_id"]), r["metric_code"], to_us(r["period_start"])): r["quantity_sum"] for r in rows}
    assert got == dict(final), "usage_totals differ from the sums over the unique events"
    dlq = await asyncio.to_thread(read_topic, s, topics.usage_dlq)
    assert not dlq, f"{len(dlq)} usage events dead-lettered, yet every event was valid"
    return (f"alerts chaos seed={seed} kills={kills} usage_starts={usage.starts} messages={len(stream)} "
            f"unique_events={len(events)} alerts={len(alerts)} thresholds={len(thresholds)} "
            f"seconds={time.monotonic() - started:.0f}")


@pytest.mark.timeout(int(120 + ROUNDS * (KILLS * 30 + 120)))
async def test_one_alert_per_threshold_and_period_with_the_usage_consumer_killed(
        migrated, stub, new_tenant, admin_conn, tmp_path):
    first = _seed()
    for n in range(ROUNDS):
        tenant = await new_tenant(f"alerts-chaos-{n}")
        summary = await one_round(first + n, migrated, stub, tenant, admin_conn, tmp_path)
        print(summary, flush=True)
        # one_round asserts the alerts; here: the round really killed the consumer mid-stream
        assert " kills=0 " not in summary and " usage_starts=1 " not in summary, summary

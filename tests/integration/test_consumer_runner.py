"""The consumer runner against the real broker and database: exactly-once effects with
offsets in PostgreSQL, resume, rollback, backpressure, dead letters and their limit,
rebalances, fencing."""
from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from billing.kafka import consumer_config, producer_config
from billing.store.db import init_connection
from consumers.runner import (
    Backpressure, BatchResult, Batching, ConsumerRunner, ConsumerSource, DeadLetter, DeadLetterPolicy, DlqLimit,
    Message, Retry, TooManyBadMessages,
)

pytestmark = pytest.mark.integration

INSERT = 'insert into runner_test_effects (topic, partition, "offset", value) values ($1, $2, $3, $4)'


# ------------------------------------------------------------------------------- helpers

@pytest.fixture
async def effects_table(admin_conn):
    await admin_conn.execute(
        'create table if not exists runner_test_effects (topic text, partition int, "offset" bigint, value text, '
        'primary key (topic, partition, "offset"))')
    await admin_conn.execute("grant select, insert on runner_test_effects to billing_app")


@pytest.fixture
async def pool(migrated, effects_table):
    pool = await asyncpg.create_pool(migrated.worker_database_url, min_size=1, max_size=4, init=init_connection)
    yield pool
    await pool.close()


def new_topic(settings, partitions: int = 3) -> str:
    name = f"runner-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        future.result(30)
    return name


def produce(settings, topic: str, messages: list[tuple[int, str]], *, key: bytes | None = None,
            headers: list | None = None) -> None:
    """messages: (partition, value) pairs, produced in order."""
    producer = Producer(producer_config(settings))
    for partition, value in messages:
        producer.produce(topic, value=value.encode(), key=key, partition=partition, headers=headers)
    assert producer.flush(30) == 0


def make_runner(settings, pool, topic: str, group: str, strategy, *, max_batch_size: int = 5000,
                max_batch_wait_s: float = 0.05, backoff_initial_s: float = 0.1, backoff_max_s: float = 0.5,
                dlq_topic: str | None = None, max_bad_share: float = 0.5, bad_window: int = 1000,
                bad_min_sample: int = 100, rejoin_timeout_s: float = 60.0, on_batch=None, observer=None,
                lag_interval_s: float = 1.0) -> ConsumerRunner:
    cfg = consumer_config(settings, group, **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    return ConsumerRunner(
        pool, ConsumerSource(cfg, (topic,), group, rejoin_timeout_s=rejoin_timeout_s), strategy,
        batching=Batching(max_batch_size, max_batch_wait_s), retry=Retry(backoff_initial_s, backoff_max_s),
        dead_letters=DeadLetterPolicy(dlq_topic, producer_config(settings),
                                      limit=DlqLimit(max_bad_share, bad_window, bad_min_sample)),
        on_batch=on_batch, observer=observer, lag_interval_s=lag_interval_s)


async def eventually(predicate, timeout_s: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def effects(pool, topic: str) -> list[tuple[int, int, str]]:
    rows = await pool.fetch(
        'select partition, "offset", value from runner_test_effects where topic = $1 order by 1, 2', topic)
    return [tuple(r) for r in rows]


async def effect_count(pool, topic: str) -> int:
    return await pool.fetchval("select count(*) from runner_test_effects where topic = $1", topic)


async def stored_offsets(pool, group: str, topic: str) -> dict[int, int]:
    rows = await pool.fetch(
        "select partition, next_offset from consumer_offsets where consumer_group = $1 and topic = $2", group, topic)
    return {r["partition"]: r["next_offset"] for r in rows}


async def stop(runner: ConsumerRunner, task: asyncio.Task) -> None:
    runner.stop()
    await asyncio.wait_for(task, 15)


class ToyStrategy:
    """Inserts every value; dead-letters values starting with "bad". A second insert of the
    same (topic, partition, offset) would fail on the primary key, so double processing
    cannot go unnoticed."""

    def __init__(self, *, explode: bool = False, backpressure_times: int = 0):
        self.explode = explode
        self.backpressure_times = backpressure_times
        self.hold = False  # raise Backpressure while set
        self.calls = 0
        self.seen: list[Message] = []
        self.last_batch: list[Message] = []
        self.hook = None  # async callable(batch), run first

    async def process(self, conn, batch):
        self.calls += 1
        self.last_batch = list(batch)
        if self.hook is not None:
            await self.hook(batch)
        if self.hold:
            raise Backpressure("held by the test")
        if self.backpressure_times > 0:
            self.backpressure_times -= 1
            raise Backpressure("database busy")
        dead, rows = [], []
        for m in batch:
            value = m.value.decode()
            if value.startswith("bad"):
                dead.append(DeadLetter(m, "undecodable", f"value {value!r} is bad"))
            else:
                rows.append((m.topic, m.partition, m.offset, value))
        if self.explode and rows:
            await conn.executemany(INSERT, rows[: max(1, len(rows) // 2)])
            raise RuntimeError("boom in the middle of a batch")
        await conn.executemany(INSERT, rows)
        self.seen.extend(batch)
        return BatchResult(dead_letters=dead, counters={"inserted": len(rows)})


# --------------------------------------------------------------------------------- tests

async def test_every_message_once_and_offsets_stored(migrated, pool):
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(p, f"v-{p}-{i}") for p in range(3) for i in range(30)])
    batches = []
    runner = make_runner(migrated, pool, topic, group, ToyStrategy(), max_batch_size=25,
                         on_batch=lambda n, d, s: batches.append((n, d, s)))
    task = asyncio.create_task(runner.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 90), what="90 effects")
    await stop(runner, task)

    rows = await effects(pool, topic)
    assert rows == [(p, i, f"v-{p}-{i}") for p in range(3) for i in range(30)]
    assert await stored_offsets(pool, group, topic) == {0: 30, 1: 30, 2: 30}
    assert runner.stats.messages == 90 and runner.stats.dead_letters == 0
    assert runner.stats.counters["inserted"] == 90
    assert sum(n for n, _, _ in batches) == 90 and all(n <= 25 for n, _, _ in batches)
    assert not runner.assigned.is_set()


async def test_second_runner_resumes_from_offsets_in_postgres(migrated, pool):
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(p, f"first-{p}-{i}") for p in range(3) for i in range(10)])
    first = make_runner(migrated, pool, topic, group, ToyStrategy())
    task = asyncio.create_task(first.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 30), what="first 30")
    await stop(first, task)

    produce(migrated, topic, [(p, f"second-{p}-{i}") for p in range(3) for i in range(5)])
    strategy = ToyStrategy()
    second = make_runner(migrated, pool, topic, group, strategy)
    task = asyncio.create_task(second.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 45), what="45 effects")
    await asyncio.sleep(0.3)  # nothing more arrives
    await stop(second, task)

    assert sorted((m.partition, m.offset) for m in strategy.seen) == [(p, o) for p in range(3) for o in range(10, 15)]
    assert await effect_count(pool, topic) == 45
    assert await stored_offsets(pool, group, topic) == {0: 15, 1: 15, 2: 15}
    # Kafka itself holds no committed offsets for the group: they live only in PostgreSQL.
    probe = Consumer(consumer_config(migrated, group))
    try:
        committed = probe.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    finally:
        probe.close()
    assert all(tp.offset == OFFSET_INVALID for tp in committed)


async def test_exception_mid_batch_rolls_back_effects_and_offsets(migrated, pool):
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(p, f"v-{p}-{i}") for p in range(3) for i in range(10)])
    broken = ToyStrategy(explode=True)
    runner = make_runner(migrated, pool, topic, group, broken)
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(runner.run(), 20)
    assert broken.calls == 1
    assert await effect_count(pool, topic) == 0
    assert await stored_offsets(pool, group, topic) == {}

    fixed = ToyStrategy()
    runner = make_runner(migrated, pool, topic, group, fixed)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 30), what="30 effects")
    await stop(runner, task)
    assert len(fixed.seen) == 30
    assert await stored_offsets(pool, group, topic) == {0: 10, 1: 10, 2: 10}


async def test_backpressure_pauses_retries_then_processes_once(migrated, pool):
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(p, f"v-{p}-{i}") for p in range(3) for i in range(20)])
    strategy = ToyStrategy(backpressure_times=3)
    runner = make_runner(migrated, pool, topic, group, strategy, backoff_initial_s=0.05)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 60), what="60 effects")
    await stop(runner, task)

    assert runner.stats.retries == 3
    assert runner.stats.pauses == 1  # paused once, stayed paused across the three retries
    assert runner.stats.messages == 60
    assert await stored_offsets(pool, group, topic) == {0: 20, 1: 20, 2: 20}


async def test_rebalance_is_served_during_backoff(migrated, pool):
    """While one runner backs off with its partitions paused it keeps polling: a second
    runner joins and gets partitions promptly, the held batch drops what was revoked, and
    together they process everything exactly once."""
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(p, f"v-{p}-{i}") for p in range(3) for i in range(10)])
    held = ToyStrategy()
    held.hold = True
    first = make_runner(migrated, pool, topic, group, held, backoff_initial_s=0.05, backoff_max_s=1.0)
    t1 = asyncio.create_task(first.run())
    await eventually(lambda: _true(held.calls >= 2), what="first runner backing off")
    assert first.stats.pauses == 1

    second_strategy = ToyStrategy()
    second = make_runner(migrated, pool, topic, group, second_strategy)
    t2 = asyncio.create_task(second.run())
    await eventually(lambda: _true(first.assignment and second.assignment
                                   and len(first.assignment | second.assignment) == 3), timeout_s=10,
                     what="partitions shared while the first runner is in backoff")
    assert not first.assignment & second.assignment
    await eventually(lambda: _true(len(second_strategy.seen) == 10 * len(second.assignment)),
                     what="second runner processed its partitions")
    held.hold = False
    await eventually(lambda: _eq(effect_count(pool, topic), 30), what="30 effects")
    await stop(first, t1)
    await stop(second, t2)
    assert await stored_offsets(pool, group, topic) == {0: 10, 1: 10, 2: 10}
    assert first.stats.messages + second.stats.messages == 30


async def test_dead_letters_carry_original_bytes_and_headers(migrated, pool):
    topic = new_topic(migrated)
    dlq = new_topic(migrated, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(0, "good-0"), (0, "bad-1"), (0, "good-2"), (0, "good-3")],
            key=b"sub-42", headers=[("content-type", b"text/plain"), ("trace", b"\x00\x01")])
    produce(migrated, topic, [(1, "good-1-0"), (2, "bad-2-0"), (2, "good-2-1")])
    runner = make_runner(migrated, pool, topic, group, ToyStrategy(), dlq_topic=dlq, bad_min_sample=100)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 5), what="5 good effects")
    await eventually(lambda: _true(runner.stats.messages == 7), what="7 committed")
    await stop(runner, task)

    assert [v for _, _, v in await effects(pool, topic)] == ["good-0", "good-2", "good-3", "good-1-0", "good-2-1"]
    assert await stored_offsets(pool, group, topic) == {0: 4, 1: 1, 2: 2}
    assert runner.stats.dead_letters == 2

    got = _read_all(migrated, dlq)
    assert len(got) == 2
    by_value = {m.value(): m for m in got}
    assert set(by_value) == {b"bad-1", b"bad-2-0"}
    m = by_value[b"bad-1"]
    assert m.key() == b"sub-42"
    headers = m.headers()
    assert headers[:2] == [("content-type", b"text/plain"), ("trace", b"\x00\x01")]
    h = dict(headers)
    assert h["dlq.reason"] == b"undecodable"
    assert h["dlq.detail"] == b"value 'bad-1' is bad"
    assert h["dlq.topic"] == topic.encode()
    assert h["dlq.partition"] == b"0" and h["dlq.offset"] == b"1"
    assert h["dlq.consumer_group"] == group.encode()
    assert h["dlq.at"].decode().endswith("+00:00")
    assert dict(by_value[b"bad-2-0"].headers())["dlq.partition"] == b"2"


async def test_too_many_bad_messages_stops_without_committing(migrated, pool):
    topic = new_topic(migrated, partitions=1)
    dlq = new_topic(migrated, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(0, f"good-{i}") for i in range(5)])
    strategy = ToyStrategy()
    runner = make_runner(migrated, pool, topic, group, strategy, dlq_topic=dlq, bad_min_sample=10,
                         max_bad_share=0.5, bad_window=100)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 5), what="5 good effects")
    produce(migrated, topic, [(0, f"bad-{i}") for i in range(30)])
    with pytest.raises(TooManyBadMessages, match="dead-lettered") as info:
        await asyncio.wait_for(task, 20)
    assert info.value.reasons == {"undecodable": len(strategy.last_batch)}

    # The batch that crossed the limit stored nothing: the stored offset is where it began,
    # and the DLQ holds only the dead letters of batches committed before it.
    failing_from = min(m.offset for m in strategy.last_batch)
    assert await stored_offsets(pool, group, topic) == {0: failing_from}
    assert runner.stats.messages == failing_from
    assert len(_read_all(migrated, dlq)) == runner.stats.dead_letters


async def test_two_runners_share_partitions_exactly_once(migrated, pool):
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    a, b = ToyStrategy(), ToyStrategy()
    ra, rb = make_runner(migrated, pool, topic, group, a), make_runner(migrated, pool, topic, group, b)
    ta, tb = asyncio.create_task(ra.run()), asyncio.create_task(rb.run())
    await eventually(lambda: _true(ra.assignment and rb.assignment and len(ra.assignment | rb.assignment) == 3),
                     what="partitions shared by both runners")
    assert not ra.assignment & rb.assignment
    produce(migrated, topic, [(p, f"v-{p}-{i}") for i in range(40) for p in range(3)])
    await eventually(lambda: _eq(effect_count(pool, topic), 120), what="120 effects")
    await stop(ra, ta)
    await stop(rb, tb)

    assert ra.stats.messages > 0 and rb.stats.messages > 0
    assert ra.stats.messages + rb.stats.messages == 120
    assert {m.partition for m in a.seen}.isdisjoint({m.partition for m in b.seen})
    assert await stored_offsets(pool, group, topic) == {0: 40, 1: 40, 2: 40}


async def test_offsets_moved_by_another_writer_fence_the_batch(migrated, pool):
    """If the stored offset changed under the runner (zombie, operator reset, a commit
    whose acknowledgement was lost), its batch is refused before any effect and the runner
    continues from the stored offset; the batch's other partitions are not affected."""
    topic = new_topic(migrated, partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(p, f"v-{i}") for p in range(2) for i in range(10)])
    strategy = ToyStrategy()
    runner = make_runner(migrated, pool, topic, group, strategy, max_batch_wait_s=0.3)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: _eq(effect_count(pool, topic), 20), what="20 effects")

    # Another writer of the group moves partition 0 past 10..12 while the runner is idle.
    await pool.execute("update consumer_offsets set next_offset = 13 where consumer_group = $1 and partition = 0",
                       group)
    produce(migrated, topic, [(p, f"v-{i}") for i in range(10, 15) for p in range(2)])
    await eventually(lambda: _eq(effect_count(pool, topic), 27), what="27 effects")
    await asyncio.sleep(0.3)
    await stop(runner, task)

    offsets_by_partition = {p: [o for q, o, _ in await effects(pool, topic) if q == p] for p in range(2)}
    assert offsets_by_partition == {0: [*range(10), 13, 14], 1: list(range(15))}
    assert sorted(m.offset for m in strategy.seen if m.partition == 0) == [*range(10), 13, 14]  # 10..12 never processed
    assert runner.stats.fenced == 1
    assert await stored_offsets(pool, group, topic) == {0: 15, 1: 15}


async def test_stop_lets_the_batch_in_hand_commit(migrated, pool):
    topic = new_topic(migrated, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(0, f"v-{i}") for i in range(20)])
    strategy = ToyStrategy()
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(batch):
        started.set()
        await release.wait()

    strategy.hook = slow
    runner = make_runner(migrated, pool, topic, group, strategy)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 15)
    runner.stop()  # while the batch is being processed
    await asyncio.sleep(0.2)
    assert not task.done()
    release.set()
    await asyncio.wait_for(task, 15)

    n = len(strategy.seen)
    assert n > 0 and strategy.calls == 1  # the batch in hand finished, no further batch began
    assert await effect_count(pool, topic) == n
    assert await stored_offsets(pool, group, topic) == {0: n}
    assert not runner.assigned.is_set()


# ------------------------------------------------------------------------------- plumbing

async def _eq(awaitable, value):
    return (await awaitable) == value


async def _true(value):
    return bool(value)


def _read_all(settings, topic: str) -> list:
    """Every message on the topic (up to its high watermarks), read without a group."""
    from confluent_kafka import OFFSET_BEGINNING

    consumer = Consumer(consumer_config(settings, f"reader-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got = []
        deadline = time.monotonic() + 15
        while len(got) < total and time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    assert len(got) == total
    return got

"""The outbox relay against the real PostgreSQL and Kafka: order, wake-up, one leader, failures, RLS.

Every test maps streams of its own (unique names) to topics of its own, so rows that other
tests leave in the shared outbox are unknown streams to it and are never published by it,
and its rows are unknown to any other relay. Rows are inserted with the owner connection.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from billing.store.db import init_connection, set_tenant
from producers.outbox_relay import OutboxRelay, backlog, stream_topics

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# -- helpers -------------------------------------------------------------------------------

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(settings, *topics: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics],
                                  operation_timeout=15)
    for f in futures.values():
        f.result(15)


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def outbox_id(self) -> int:
        return int(self.headers["outbox-id"])


def read_all(settings, *topics: str) -> list[Msg]:
    """Every message now in the topics (up to each partition's high watermark)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": unique("relay-test"),
                         "enable.auto.commit": False})
    try:
        md = consumer.list_topics(timeout=10)
        wanted: dict[tuple[str, int], int] = {}
        for t in topics:
            for p in md.topics[t].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if high > low:
                    wanted[(t, p)] = high
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for (t, p) in wanted])
        out: list[Msg] = []
        done: set[tuple[str, int]] = set()
        deadline = time.monotonic() + 15
        while len(done) < len(wanted) and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            headers = {k: v.decode() for k, v in (m.headers() or [])}
            out.append(Msg(m.topic(), m.partition(), m.offset(), m.key(), m.value(), headers))
            if m.offset() + 1 >= wanted[(m.topic(), m.partition())]:
                done.add((m.topic(), m.partition()))
        assert len(done) == len(wanted), "could not read the topics to their end"
        return out
    finally:
        consumer.close()


async def insert(admin_conn, tenant_id: str, stream: str, key: bytes | None, payload: bytes,
                 headers: dict[str, str] | None = None) -> int:
    return await admin_conn.fetchval(
        "insert into outbox (tenant_id, stream, key, payload, headers) values ($1, $2, $3, $4, $5) returning id",
        uuid.UUID(tenant_id), stream, key, payload, headers or {},
    )


async def published(admin_conn, ids) -> dict[int, object]:
    rows = await admin_conn.fetch("select id, published_at from outbox where id = any($1::bigint[])", list(ids))
    return {r["id"]: r["published_at"] for r in rows}


async def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def all_published(admin_conn, ids, timeout: float = 10.0) -> None:
    async def check():
        marks = await published(admin_conn, ids)
        return len(marks) == len(ids) and all(v is not None for v in marks.values())
    await wait_until(check, timeout)


@pytest.fixture
async def app_pool(migrated):
    pool = await asyncpg.create_pool(migrated.worker_database_url, min_size=1, max_size=2, init=init_connection)
    yield pool
    await pool.close()


class Relays:
    """Starts relays as tasks in this event loop; the fixture stops them all at the end."""

    def __init__(self, settings, pool):
        self.settings = settings
        self.pool = pool
        self.started: list[tuple[OutboxRelay, asyncio.Task]] = []
        self.tenants: list[uuid.UUID] = []
        # A group of this test's own, so a relay that another fixture runs in the default
        # group never makes these standbys.
        self.group = unique("group")

    def start(self, **kw) -> OutboxRelay:
        kw.setdefault("settings", self.settings)
        kw.setdefault("group", self.group)
        kw.setdefault("poll_interval_s", 0.5)
        kw.setdefault("standby_retry_s", 0.3)
        relay = OutboxRelay(pool=self.pool, listen_dsn=self.settings.worker_database_url, **kw)
        self.started.append((relay, asyncio.create_task(relay.run(), name="outbox-relay")))
        return relay

    def task(self, relay: OutboxRelay) -> asyncio.Task:
        return next(t for r, t in self.started if r is relay)

    async def stop(self, relay: OutboxRelay, timeout: float = 15) -> None:
        relay.stop()
        await asyncio.wait_for(self.task(relay), timeout)

    async def stop_all(self) -> None:
        for relay, _ in self.started:
            relay.stop()
        await asyncio.wait_for(asyncio.gather(*(t for _, t in self.started)), 20)


@pytest.fixture
async def relays(migrated, app_pool, admin_conn):
    r = Relays(migrated, app_pool)
    yield r
    await r.stop_all()
    # Rows a test deliberately left unpublished (an unknown stream, say) would stay in the
    # shared backlog: settle them here (outbox rows are never deleted).
    if r.tenants:
        await admin_conn.execute(
            "update outbox set published_at = now() where tenant_id = any($1::uuid[]) and published_at is null",
            r.tenants)


async def two_tenants(new_tenant, relays) -> tuple[str, str]:
    a, b = await new_tenant(), await new_tenant()
    relays.tenants += [uuid.UUID(a.id), uuid.UUID(b.id)]
    return a.id, b.id


def settings_with_topics(settings, **topics: str):
    """A copy of the settings whose topics are the ones given (unique per test)."""
    return settings.model_copy(update={"topics": settings.topics.model_copy(update=topics)})


def streams_and_topics(settings) -> tuple[dict[str, str], object]:
    """Two streams of this test's own, mapped to fresh topics of a settings copy."""
    s = settings_with_topics(settings, subscription_events=unique("t.sub-events"),
                             invoice_requests=unique("t.invoice-requests"))
    mapping = stream_topics(s)
    assert mapping["subscription_events"] == s.topics.subscription_events
    assert mapping["invoice_requests"] == s.topics.invoice_requests
    assert mapping["billing_runs"] == s.topics.billing_runs
    # Streams named for this test only (see the module docstring), on the copy's topics.
    ours = {unique("events"): s.topics.subscription_events, unique("invoices"): s.topics.invoice_requests}
    return ours, s


# -- tests ---------------------------------------------------------------------------------

async def test_publishes_in_id_order_per_key_with_headers_then_marks(migrated, admin_conn, new_tenant, relays):
    (events, invoices), s = streams_and_topics(migrated)
    streams = dict(zip(("events", "invoices"), (events, invoices)))
    mapping = {events: s.topics.subscription_events, invoices: s.topics.invoice_requests}
    create_topics(s, *mapping.values())
    ta, tb = await two_tenants(new_tenant, relays)

    expected = {}   # outbox id -> (tenant, stream, key, payload, headers)
    for i in range(60):
        tenant = (ta, tb)[i % 2]
        stream = streams[("events", "invoices")[i % 3 == 0]]
        key = f"{tenant}:sub-{i % 4}".encode()
        payload = json.dumps({"event_id": str(uuid.uuid4()), "seq": i}).encode()
        headers = {"content-type": "application/json", "traceparent": f"00-{'a' * 32}-{'b' * 16}-01"}
        row_id = await insert(admin_conn, tenant, stream, key, payload, headers)
        expected[row_id] = (tenant, stream, key, payload, headers)
    keyless = await insert(admin_conn, ta, events, None, b"no key")
    expected[keyless] = (ta, events, None, b"no key", {})

    calls = []
    relay = relays.start(settings=s, topics=mapping, batch_size=25, on_published=lambda n, sec: calls.append((n, sec)))
    await all_published(admin_conn, expected)
    assert relay.is_leader
    assert sum(n for n, _ in calls) == len(expected) and all(sec >= 0 for _, sec in calls)
    assert len(calls) >= 3   # batches of 25

    msgs = [m for m in read_all(s, *mapping.values()) if m.headers.get("tenant-id") in (ta, tb)]
    assert sorted(m.outbox_id for m in msgs) == sorted(expected)   # each row exactly once
    by_key = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.topic, m.partition, m.offset)):
        tenant, stream, key, payload, headers = expected[m.outbox_id]
        assert m.topic == mapping[stream]
        assert (m.key, m.value) == (key, payload)
        # The row's trace continues: the message's traceparent names the relay's publish span
        # (a child of the row's span) when tracing is on, the row's span itself when it is off.
        row_trace = headers.get("traceparent")
        got_trace = m.headers.pop("traceparent", None)
        ce = {k: m.headers.pop(k) for k in list(m.headers) if k.startswith("ce_")}  # CloudEvents binary mode
        assert {k: ce[k] for k in ("ce_specversion", "ce_id", "ce_tenantid", "ce_source")} == {
            "ce_specversion": "1.0", "ce_id": f"{stream}/{m.outbox_id}", "ce_tenantid": tenant,
            "ce_source": s.cloudevents_source}
        assert ce["ce_type"] and ce["ce_time"].endswith("Z") and ce.get("ce_subject") == (key.decode() if key else None)
        assert m.headers == {**{k: v for k, v in headers.items() if k != "traceparent"},
                             "outbox-id": str(m.outbox_id), "tenant-id": tenant}
        if row_trace:
            assert got_trace.split("-")[1] == row_trace.split("-")[1]
        by_key[(m.topic, m.key)].append(m.outbox_id)
    for ids in by_key.values():
        assert ids == sorted(ids)   # per key, the topic holds the rows in id order
    first_marks = await published(admin_conn, expected)

    # A second pass (a fresh relay, as after a restart) publishes nothing more.
    await relays.stop(relay)
    second = relays.start(settings=s, topics=mapping)
    await wait_until(lambda: asyncio.sleep(0, second.is_leader), 10)
    await asyncio.sleep(1.0)
    await relays.stop(second)
    again = [m for m in read_all(s, *mapping.values()) if m.headers.get("tenant-id") in (ta, tb)]
    assert len(again) == len(msgs)
    assert await published(admin_conn, expected) == first_marks


async def test_insert_while_idle_is_published_at_once_by_notify(migrated, admin_conn, new_tenant, relays):
    stream, topic = unique("events"), unique("t.notify")
    create_topics(migrated, topic)
    ta, _ = await two_tenants(new_tenant, relays)
    # poll_interval_s=30 and long backoffs: within this test only NOTIFY can wake the relay.
    relay = relays.start(topics={stream: topic}, poll_interval_s=30, retry_backoff_s=60, max_retry_backoff_s=60)
    await wait_until(lambda: asyncio.sleep(0, relay.is_leader), 10)
    await asyncio.sleep(0.5)   # its first cycle is done; it now waits up to 30 s

    for _ in range(3):
        t0 = time.monotonic()
        row_id = await insert(admin_conn, ta, stream, b"k", b"v")
        await all_published(admin_conn, [row_id], timeout=5)
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.2)


async def test_two_relays_one_leader_each_row_once_and_failover(migrated, admin_conn, new_tenant, relays):
    stream, topic = unique("events"), unique("t.failover")
    create_topics(migrated, topic)
    ta, tb = await two_tenants(new_tenant, relays)
    group = unique("group")
    ids = [await insert(admin_conn, (ta, tb)[i % 2], stream, f"k{i % 7}".encode(), f"v{i}".encode())
           for i in range(200)]

    r1 = relays.start(topics={stream: topic}, group=group, batch_size=20)
    r2 = relays.start(topics={stream: topic}, group=group, batch_size=20)
    await all_published(admin_conn, ids)
    await asyncio.sleep(0.5)
    assert [r1.is_leader, r2.is_leader].count(True) == 1
    leader, standby = (r1, r2) if r1.is_leader else (r2, r1)
    # An unrelated group has a lock of its own (one active relay per group, not per database).
    other_group = relays.start(topics={}, group=unique("group"))
    await wait_until(lambda: asyncio.sleep(0, other_group.is_leader), 5)

    msgs = read_all(migrated, topic)
    assert len(msgs) == 200 and len({m.outbox_id for m in msgs}) == 200

    await relays.stop(leader)
    await wait_until(lambda: asyncio.sleep(0, standby.is_leader), 5)
    more = [await insert(admin_conn, ta, stream, f"k{i % 7}".encode(), f"w{i}".encode()) for i in range(50)]
    await all_published(admin_conn, more)
    msgs = read_all(migrated, topic)
    assert len(msgs) == 250 and {m.outbox_id for m in msgs} == set(ids + more)


RELAY_PROCESS = """
import asyncio, json, sys
from billing.config import Settings
from producers.outbox_relay import OutboxRelay
cfg = json.loads(sys.argv[1])
async def main():
    settings = Settings(worker_database_url=cfg["dsn"], kafka_bootstrap_servers=cfg["kafka"])
    relay = OutboxRelay(pool=None, listen_dsn=cfg["dsn"], settings=settings, topics=cfg["topics"],
                        group=cfg["group"], poll_interval_s=0.5)
    task = asyncio.create_task(relay.run())
    while not relay.is_leader:
        await asyncio.sleep(0.05)
    print("leader", flush=True)
    await task
asyncio.run(main())
"""


async def test_killed_leader_process_frees_the_lock_for_the_standby(migrated, admin_conn, new_tenant, relays):
    stream, topic = unique("events"), unique("t.killed")
    create_topics(migrated, topic)
    ta, _ = await two_tenants(new_tenant, relays)
    group = unique("group")
    cfg = {"dsn": migrated.worker_database_url, "kafka": migrated.kafka_bootstrap_servers, "topics": {stream: topic},
           "group": group}
    proc = subprocess.Popen([sys.executable, "-c", RELAY_PROCESS, json.dumps(cfg)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert line.strip() == "leader"
        standby = relays.start(topics={stream: topic}, group=group)
        first = [await insert(admin_conn, ta, stream, b"k", f"v{i}".encode()) for i in range(10)]
        await all_published(admin_conn, first)
        assert not standby.is_leader

        os.kill(proc.pid, signal.SIGKILL)   # no unlock, no goodbye: the session just dies
        proc.wait(5)
        await wait_until(lambda: asyncio.sleep(0, standby.is_leader), 5)
        later = [await insert(admin_conn, ta, stream, b"k", f"w{i}".encode()) for i in range(10)]
        await all_published(admin_conn, later)
        msgs = read_all(migrated, topic)
        assert [m.outbox_id for m in msgs] == first + later   # one partition per key: in order, once
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_failed_delivery_holds_its_stream_others_flow_then_it_catches_up(
        migrated, admin_conn, new_tenant, relays):
    good, bad, unknown = unique("events"), unique("invoices"), unique("nowhere")
    good_topic, bad_topic = unique("t.good"), unique("t.missing")
    create_topics(migrated, good_topic)   # bad_topic does not exist; the broker does not auto-create
    ta, tb = await two_tenants(new_tenant, relays)
    rows: dict[str, list[int]] = defaultdict(list)
    for i in range(30):
        stream = (good, bad)[i % 2]
        rows[stream].append(await insert(admin_conn, (ta, tb)[i % 3 == 0], stream, f"k{i % 3}".encode(), b"%d" % i))
    rows[unknown].append(await insert(admin_conn, ta, unknown, b"k", b"lost?"))

    relay = relays.start(topics={good: good_topic, bad: bad_topic}, batch_size=10, retry_backoff_s=0.2,
                         max_retry_backoff_s=1.0, producer_overrides={"topic.metadata.propagation.max.ms": 1000})
    await all_published(admin_conn, rows[good], timeout=10)
    more_good = [await insert(admin_conn, tb, good, b"k9", b"later %d" % i) for i in range(5)]
    await all_published(admin_conn, more_good, timeout=5)   # still flowing while `bad` fails
    await asyncio.sleep(1.5)   # a few retries of `bad`
    marks = await published(admin_conn, rows[bad] + rows[unknown])
    assert all(v is None for v in marks.values())
    assert relay.is_leader

    create_topics(migrated, bad_topic)
    await all_published(admin_conn, rows[bad], timeout=10)
    msgs = read_all(migrated, bad_topic)
    assert sorted(m.outbox_id for m in msgs) == rows[bad]   # each once
    by_key = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        by_key[m.key].append(m.outbox_id)
    assert all(ids == sorted(ids) for ids in by_key.values())
    # The unknown stream's row stays unpublished, and the loop is alive.
    assert (await published(admin_conn, rows[unknown]))[rows[unknown][0]] is None
    assert relay.is_leader and not relays.task(relay).done()


async def test_app_role_sees_one_tenant_but_relay_functions_cross_tenants(migrated, admin_conn, new_tenant, relays,
                                                                         app_pool):
    stream = unique("events")
    ta, tb = await two_tenants(new_tenant, relays)
    ia = await insert(admin_conn, ta, stream, b"k", b"a")
    ib = await insert(admin_conn, tb, stream, b"k", b"b")

    async with app_pool.acquire() as conn:
        # Plain SQL as billing_worker (the relay's role): no tenant, no rows; one tenant, only its rows.
        assert await conn.fetchval("select count(*) from outbox where id = any($1::bigint[])", [ia, ib]) == 0
        async with conn.transaction():
            await set_tenant(conn, uuid.UUID(ta))
            seen = await conn.fetch("select id from outbox where id = any($1::bigint[])", [ia, ib])
            assert [r["id"] for r in seen] == [ia]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("delete from outbox where id = $1", ia)   # the audit trail stays

        pending = await conn.fetch("select tenant_id, id, stream from outbox_pending($1, 100000)", ia - 1)
        assert [(str(r["tenant_id"]), r["id"]) for r in pending if r["stream"] == stream] == [(ta, ia), (tb, ib)]
        skipped = await conn.fetch("select id from outbox_pending($1, 100000, $2)", ia - 1, [stream])
        assert not {ia, ib} & {r["id"] for r in skipped}
        before = await backlog(app_pool)
        assert before >= 2
        assert await conn.fetchval("select outbox_mark_published($1::bigint[])", [ia, ib]) == 2
        assert await conn.fetchval("select outbox_mark_published($1::bigint[])", [ia, ib]) == 0   # once only
        assert await backlog(app_pool) <= before - 2

    # The functions run as their owner and nobody but billing_worker may call them.
    acl = await admin_conn.fetch(
        "select p.proname, p.prosecdef, pg_get_userbyid(p.proowner) as owner, p.proacl::text[] as acl "
        "from pg_proc p where p.proname in ('outbox_pending', 'outbox_mark_published', 'outbox_backlog')")
    assert len(acl) == 3
    for r in acl:
        assert r["prosecdef"] and r["owner"] not in ("billing_app", "billing_worker")
        grantees = {entry.split("=")[0] for entry in r["acl"]}
        assert "" not in grantees and "billing_worker" in grantees   # "" would be PUBLIC
        assert "billing_app" not in grantees   # the API role: tests/integration/test_db_roles.py


async def test_lost_session_steps_down_and_relaying_resumes(stack, migrated, admin_conn, new_tenant, relays):
    if stack is None:
        pytest.skip("needs the local stack's superuser to end another role's session")
    stream, topic = unique("events"), unique("t.lost")
    create_topics(migrated, topic)
    ta, _ = await two_tenants(new_tenant, relays)
    group = unique("group")
    r1 = relays.start(topics={stream: topic}, group=group, retry_backoff_s=0.2)
    r2 = relays.start(topics={stream: topic}, group=group, retry_backoff_s=0.2)
    first = [await insert(admin_conn, ta, stream, b"k", f"v{i}".encode()) for i in range(10)]
    await all_published(admin_conn, first)

    su = await asyncpg.connect(stack.postgres.superuser_url.rsplit("/", 1)[0] + "/billing")
    try:
        # The leader's session (the one holding the advisory lock) is ended under it.
        ended = await su.fetchval(
            "select count(pg_terminate_backend(a.pid)) from pg_stat_activity a join pg_locks l on l.pid = a.pid "
            "where l.locktype = 'advisory' and l.granted and a.application_name = $1",
            f"billing-outbox-relay:{group}"[:63])
        assert ended == 1
    finally:
        await su.close()
    later = [await insert(admin_conn, ta, stream, b"k", f"w{i}".encode()) for i in range(10)]
    await all_published(admin_conn, later)
    await wait_until(lambda: asyncio.sleep(0, [r1.is_leader, r2.is_leader].count(True) == 1), 5)
    msgs = read_all(migrated, topic)
    assert [m.outbox_id for m in msgs] == first + later


# -- poison rows: a row Kafka refuses for good is parked, the others flow ------------------------

async def park_state(admin_conn, ids) -> dict[int, tuple]:
    rows = await admin_conn.fetch(
        "select id, published_at, parked_at, park_reason, park_error from outbox where id = any($1::bigint[])",
        list(ids))
    return {r["id"]: (r["published_at"], r["parked_at"], r["park_reason"], r["park_error"]) for r in rows}


def create_small_topic(settings, topic: str, partitions: int) -> None:
    """A topic that refuses messages over 4 KiB."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                           config={"max.message.bytes": "4096"})], operation_timeout=15).values():
        f.result(15)


def set_topic_max_message_bytes(settings, topic: str, value: int) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)])
    for f in admin.incremental_alter_configs([resource]).values():
        f.result(15)


async def test_oversized_rows_are_parked_other_keys_flow_same_key_held_until_released(
        migrated, admin_conn, new_tenant, relays):
    stream, topic = unique("events"), unique("t.small")
    create_small_topic(migrated, topic, 3)
    ta, tb = await two_tenants(new_tenant, relays)
    normal: list[int] = []
    for i in range(10):
        normal.append(await insert(admin_conn, (ta, tb)[i % 2], stream, f"k{i % 3}".encode(), b"before %d" % i))
    # Random bytes do not compress: over the topic's 4096 bytes (refused by the broker, in its
    # delivery report), and over the producer's message.max.bytes (refused at produce()).
    broker_big = await insert(admin_conn, ta, stream, b"poison", os.urandom(20_000))
    client_big = await insert(admin_conn, tb, stream, b"huge", os.urandom(150_000))
    keyless_big = await insert(admin_conn, ta, stream, None, os.urandom(20_000))
    behind: list[int] = []
    for i in range(10):
        normal.append(await insert(admin_conn, (ta, tb)[i % 2], stream, f"k{i % 3}".encode(), b"after %d" % i))
        if i % 4 == 0:
            behind.append(await insert(admin_conn, ta, stream, b"poison", b"behind %d" % i))
    keyless_ok = await insert(admin_conn, ta, stream, None, b"keyless fine")
    normal.append(keyless_ok)

    parks: list[str] = []
    relay = relays.start(topics={stream: topic}, batch_size=50, retry_backoff_s=0.2, max_retry_backoff_s=1.0,
                         producer_overrides={"message.max.bytes": 100_000}, on_parked=parks.append)
    await all_published(admin_conn, normal, timeout=15)

    async def all_parked():
        state = await park_state(admin_conn, [broker_big, client_big, keyless_big])
        return all(s[1] is not None for s in state.values())
    await wait_until(all_parked, 15)
    state = await park_state(admin_conn, [broker_big, client_big, keyless_big] + behind)
    for row_id in (broker_big, client_big, keyless_big):
        published_at, parked_at, reason, error = state[row_id]
        assert published_at is None and parked_at is not None   # kept, not lost
        assert reason == "message_too_large" and "too large" in error.lower(), (reason, error)
    assert sorted(parks) == ["message_too_large"] * 3
    for row_id in behind:   # same key behind a parked row: held, neither published nor parked
        assert state[row_id][0] is None and state[row_id][1] is None

    # Other keys keep flowing, the relay is alive, and the parked row is not retried.
    more = [await insert(admin_conn, tb, stream, b"k1", b"later %d" % i) for i in range(5)]
    await all_published(admin_conn, more, timeout=15)
    await asyncio.sleep(1.5)
    assert len(parks) == 3 and relay.is_leader and not relays.task(relay).done()
    async with relays.pool.acquire() as conn:
        assert await conn.fetchval("select outbox_parked_count()") >= 3
        # The relay's role may park and count, not release (that is the operator's).
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("select outbox_release($1::bigint[])", [broker_big])

    msgs = read_all(migrated, topic)
    assert sorted(m.outbox_id for m in msgs) == sorted(normal + more)
    by_key = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        by_key[m.key].append(m.outbox_id)
    assert all(ids == sorted(ids) for ids in by_key.values())

    # The operator raises the topic's limit and releases: the parked row goes out, then the
    # held rows of its key, in id order. A row still too large (for the producer) parks again.
    set_topic_max_message_bytes(migrated, topic, 1_048_576)
    assert await admin_conn.fetchval("select outbox_release($1::bigint[])", [broker_big, client_big, keyless_big]) == 3
    await all_published(admin_conn, [broker_big, keyless_big] + behind, timeout=15)

    async def parked_again():
        return (await park_state(admin_conn, [client_big]))[client_big][1] is not None
    await wait_until(parked_again, 20)
    assert len(parks) == 4
    msgs = [m for m in read_all(migrated, topic) if m.key == b"poison"]
    assert [m.outbox_id for m in sorted(msgs, key=lambda m: m.offset)] == [broker_big] + behind


async def test_broker_outage_is_retried_never_parked(migrated, admin_conn, new_tenant, relays):
    from billing.devstack import free_port

    stream, topic = unique("events"), unique("t.outage")
    create_small_topic(migrated, topic, 1)
    ta, _ = await two_tenants(new_tenant, relays)
    rows = [await insert(admin_conn, ta, stream, b"k", b"v%d" % i) for i in range(5)]
    big = await insert(admin_conn, ta, stream, b"big", os.urandom(20_000))

    # No broker at all (a Kafka outage as the relay sees it): deliveries time out, rows are retried.
    parks: list[str] = []
    down = relays.start(topics={stream: topic}, retry_backoff_s=0.2, max_retry_backoff_s=0.5, group=unique("group"),
                        producer_overrides={"bootstrap.servers": f"127.0.0.1:{free_port()}",
                                            "message.timeout.ms": 800}, on_parked=parks.append)
    await wait_until(lambda: asyncio.sleep(0, down.is_leader), 10)
    await asyncio.sleep(4)
    state = await park_state(admin_conn, rows + [big])
    assert all(s[0] is None and s[1] is None for s in state.values())   # neither published nor parked
    assert parks == [] and not relays.task(down).done()
    await relays.stop(down)

    # The broker is back: everything goes out, and only the oversized row is parked.
    relays.start(topics={stream: topic}, retry_backoff_s=0.2, max_retry_backoff_s=0.5, on_parked=parks.append)
    await all_published(admin_conn, rows, timeout=15)

    async def big_parked():
        return (await park_state(admin_conn, [big]))[big][1] is not None
    await wait_until(big_parked, 10)
    assert parks == ["message_too_large"]
    assert [m.outbox_id for m in read_all(migrated, topic)] == rows

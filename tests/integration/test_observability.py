"""Metrics, traces and logs after real traffic: gRPC calls, usage events and commands through the
real Kafka, the outbox relay publishing. Metrics are compared before/after on /metrics."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import uuid
from datetime import timezone

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from billing.ops import tracing
from billing.ops.logging import JsonFormatter
from billing.services.usage import to_us
from billing.v1 import billing_pb2 as pb
from tests.integration.test_ops import _sample
from tests.integration.test_usage_consumer import avro
from tests.integration.test_usage_ingest import _setup
from tests.kafka_helpers import TopicReader, command, produce, running_roles, wait_until

USAGE, COMMANDS = "billing-usage", "billing-commands"


@pytest.fixture(scope="module")
def spans(migrated) -> InMemorySpanExporter:
    """Every span this process ends from now on (the service's provider, plus this exporter)."""
    provider = tracing.configure(migrated)
    assert provider is not None, "tracing is on by default"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # keeps nothing for the rest of the session (a processor cannot be removed)


@pytest.fixture(scope="module")
async def roles(migrated, spans):
    settings = migrated.model_copy(update={"outbox_backlog_interval_s": 0.2})
    async with running_roles(settings, ("commands", "usage", "relay")) as svc:
        yield svc


async def scrape(svc) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{svc.settings.http_host}:{svc.settings.http_port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


def _series(text: str, name: str) -> dict[tuple, float]:
    """Every sample of `name`: labels (sorted tuples) -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels = ()
            if "{" in line:
                body = line[line.index("{") + 1:line.index("}")]
                labels = tuple(sorted(tuple(p.split("=", 1)) for p in body.split(",") if p))
            out[labels] = float(line.rsplit(" ", 1)[1])
    return out


def _value(text: str, name: str, **labels) -> float:
    if labels:
        return _sample(text, name, **labels)
    return _series(text, name).get((), 0.0)


async def _caught_up(svc, admin_conn) -> None:
    """Nothing left over from earlier tests: both consumer groups at lag 0 on every partition
    of their topic, and the outbox drained."""
    settings = svc.settings

    async def done():
        text = await scrape(svc)
        lag = _series(text, "billing_consumer_lag_messages")
        for group, topic in ((USAGE, settings.topics.usage), (COMMANDS, settings.topics.subscription_commands)):
            mine = {k: v for k, v in lag.items() if ("group", f'"{group}"') in k and ("topic", f'"{topic}"') in k}
            if len(mine) != settings.kafka_partitions or any(mine.values()):
                return False
        return await admin_conn.fetchval("select count(*) = 0 from outbox where published_at is null")

    await wait_until(done, timeout_s=90)


async def _settled_scrape(svc) -> str:
    """A scrape taken once the relay has counted every row it marked: it counts a row just
    after marking it, so a drained outbox can still be a moment ahead of the counters."""
    text = await scrape(svc)
    while True:
        await asyncio.sleep(0.3)
        again = await scrape(svc)
        if all(_value(again, name) == _value(text, name) for name in
               ("billing_outbox_published_total", "billing_outbox_delivery_delay_seconds_count")):
            return again
        text = again


async def test_metrics_move_by_the_right_amounts(roles, service, stub, tenant, admin_conn, migrated):
    await _caught_up(roles, admin_conn)
    _, sub = await _setup(stub, tenant)  # CreatePlan + CreateSubscription over gRPC (outbox rows)
    await wait_until(lambda: admin_conn.fetchval("select count(*) = 0 from outbox where published_at is null"))
    max_id = await admin_conn.fetchval("select coalesce(max(id), 0) from outbox")
    before = await _settled_scrape(roles)

    # gRPC: one OK, one NOT_FOUND, one UNAUTHENTICATED
    await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetPlan(pb.GetPlanRequest(id=str(uuid.uuid4())), metadata=tenant.md)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.ListPlans(pb.ListPlansRequest(), metadata=(("authorization", "Bearer bk_nope"),))

    # usage: 3 good events, the first one again (a duplicate), one undecodable
    at = to_us(sub.start_at.ToDatetime(timezone.utc)) + 1_000_000
    first = avro(tenant.id, sub.id, "1", at, event_id="obs-1")
    usage = [first, avro(tenant.id, sub.id, "2", at, event_id="obs-2"), avro(tenant.id, sub.id, "3", at, event_id="obs-3"),
             first, os.urandom(40)]
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, [(sub.id, v) for v in usage])

    # commands: one valid (pauses the subscription: one event through the outbox), one undecodable
    pause = command(tenant.id, sub.id, "PauseSubscription", {"resumes_at_us": None})
    await asyncio.to_thread(produce, migrated, migrated.topics.subscription_commands,
                            [(sub.id, pause), (sub.id, b"\x00garbage")])

    async def processed():
        # The relay counts a row after marking it, so the database is read before the scrape
        # and the scrape must show every marked row counted (waited for, asserted exactly below).
        published = await admin_conn.fetchval(
            "select count(*) filter (where published_at is not null) from outbox where id > $1"
            " having bool_and(published_at is not null)", max_id)
        if not published:
            return None
        text = await scrape(roles)
        moved = (_value(text, "billing_consumer_messages_total", group=USAGE)
                 - _value(before, "billing_consumer_messages_total", group=USAGE) >= 5
                 and _value(text, "billing_consumer_messages_total", group=COMMANDS)
                 - _value(before, "billing_consumer_messages_total", group=COMMANDS) >= 2
                 and _value(text, "billing_outbox_published_total")
                 - _value(before, "billing_outbox_published_total") >= published
                 and _value(text, "billing_outbox_delivery_delay_seconds_count")
                 - _value(before, "billing_outbox_delivery_delay_seconds_count") >= published)
        return text if moved else None

    after = await wait_until(processed)
    new_rows = await admin_conn.fetchval("select count(*) from outbox where id > $1", max_id)
    assert new_rows == 1  # subscription.paused

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    # gRPC, by method and code
    assert delta("billing_grpc_requests_total", method="GetSubscription", code="OK") == 1
    assert delta("billing_grpc_requests_total", method="GetPlan", code="NOT_FOUND") == 1
    assert delta("billing_grpc_requests_total", method="ListPlans", code="UNAUTHENTICATED") == 1
    assert delta("billing_grpc_request_duration_seconds_count", method="GetSubscription") == 1
    # consumers
    assert delta("billing_consumer_messages_total", group=USAGE) == 5
    assert delta("billing_consumer_messages_total", group=COMMANDS) == 2
    assert delta("billing_consumer_dead_letters_total", group=USAGE, reason="undecodable") == 1
    assert delta("billing_consumer_dead_letters_total", group=COMMANDS, reason="undecodable") == 1
    assert delta("billing_consumer_dedup_hits_total", group=USAGE) == 1
    for group in (USAGE, COMMANDS):
        batches = delta("billing_consumer_batches_total", group=group)
        assert batches >= 1
        assert delta("billing_consumer_batch_duration_seconds_count", group=group) == batches
    # lag: every partition of both topics reported, back to 0 once processed
    lag = _series(after, "billing_consumer_lag_messages")
    assert len([k for k in lag if ("group", f'"{USAGE}"') in k]) == migrated.kafka_partitions
    await _caught_up(roles, admin_conn)
    # outbox: exactly the new row published, with its latency observed
    assert delta("billing_outbox_published_total") == new_rows
    assert delta("billing_outbox_publish_duration_seconds_count") >= 1
    assert delta("billing_outbox_delivery_delay_seconds_count") == new_rows
    assert delta("billing_outbox_delivery_delay_seconds_sum") > 0
    assert _value(after, "billing_outbox_relay_leader") == 1
    # database pool
    assert _value(after, "billing_db_pool_connections") >= 1
    assert 0 <= _value(after, "billing_db_pool_connections_in_use") <= _value(after, "billing_db_pool_connections")
    assert _value(after, "billing_db_pool_connections_max") >= _value(after, "billing_db_pool_connections")
    assert _value(after, "billing_ready") == 1
    # bounded labels: no tenant, subscription or event ids anywhere
    assert tenant.id not in after and sub.id not in after and "obs-1" not in after


async def test_outbox_backlog_gauge_follows_unpublished_rows(roles, tenant, admin_conn):
    """A row the relay cannot publish (a stream no deploy knows) stays in the backlog gauge
    until it is gone; deleted here (as the owner) so the suite's outbox stays clean."""
    await _caught_up(roles, admin_conn)
    row_id = await admin_conn.fetchval(
        "insert into outbox (tenant_id, stream, key, payload, headers) values ($1, 'observability_unknown', null,"
        " 'x', '{}') returning id", uuid.UUID(tenant.id))
    try:
        async def backlog(expected):
            text = await scrape(roles)
            return _value(text, "billing_outbox_backlog_rows") == expected and text

        text = await wait_until(lambda: backlog(1), timeout_s=30)
        assert _value(text, "billing_outbox_oldest_unpublished_age_seconds") > 0
    finally:
        await admin_conn.execute("delete from outbox where id = $1", row_id)
    text = await wait_until(lambda: backlog(0), timeout_s=30)
    assert _value(text, "billing_outbox_oldest_unpublished_age_seconds") == 0


def _traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def _of_trace(exporter: InMemorySpanExporter, trace_id: str) -> list:
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


async def test_a_command_with_a_traceparent_is_one_trace_to_the_emitted_event(roles, spans, stub, tenant, migrated):
    _, sub = await _setup(stub, tenant)
    trace_id, traceparent = _traceparent()
    cancel = command(tenant.id, sub.id, "CancelSubscription", {"mode": "IMMEDIATELY", "proration": ""})
    reader = TopicReader(migrated, migrated.topics.subscription_events)
    try:
        await asyncio.to_thread(produce, migrated, migrated.topics.subscription_commands, [(sub.id, cancel)],
                                [("traceparent", traceparent.encode())])

        def canceled(ms):
            return [m for m in ms if m.key() == sub.id.encode()
                    and dict(m.headers() or []).get("event-type") == b"subscription.canceled"]

        msgs = await asyncio.to_thread(reader.until, lambda ms: canceled(ms), 60)
        event = canceled(msgs)[0]
    finally:
        reader.close()
    headers = dict(event.headers())
    assert headers["traceparent"].decode().split("-")[1] == trace_id  # the emitted event carries the trace

    async def all_spans():
        got = _of_trace(spans, trace_id)
        names = {s.name for s in got}
        return got if {"command CancelSubscription", "db.transaction"} <= names and any(
            n.startswith("publish ") for n in names) else None

    got = await wait_until(all_spans, timeout_s=30)
    by_name = {s.name: s for s in got}
    consumer = by_name["command CancelSubscription"]
    tx = next(s for s in got if s.name == "db.transaction")
    publish = by_name[f"publish {migrated.topics.subscription_events}"]
    assert consumer.parent.span_id == int(traceparent.split("-")[2], 16)  # continues the producer's span
    assert tx.attributes["billing.tenant_id"] == tenant.id
    assert consumer.attributes["billing.tenant_id"] == tenant.id
    # the message on the topic names the publish span as its parent
    assert headers["traceparent"].decode().split("-")[2] == format(publish.context.span_id, "016x")
    # the runner's batch span links to the message's trace
    batch = [s for s in spans.get_finished_spans() if s.name == f"process {migrated.topics.subscription_commands}"
             and any(format(link.context.trace_id, "032x") == trace_id for link in s.links)]
    assert batch and consumer.links[0].context.span_id == batch[0].context.span_id


async def test_a_grpc_call_and_a_usage_event_continue_the_callers_trace(roles, spans, stub, tenant, migrated,
                                                                       admin_conn):
    _, sub = await _setup(stub, tenant)
    # gRPC: traceparent in the metadata; the outbox row and the published event stay in the trace
    trace_id, traceparent = _traceparent()
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=str(uuid.uuid4()), id=sub.id),
                                 metadata=tenant.md + (("traceparent", traceparent),))
    row = await admin_conn.fetchrow("select headers from outbox where tenant_id = $1 and headers->>'event-type' ="
                                    " 'subscription.paused'", uuid.UUID(tenant.id))
    assert row["headers"]["traceparent"].split("-")[1] == trace_id

    async def grpc_spans():
        names = {s.name for s in _of_trace(spans, trace_id)}
        return names if "billing.v1.BillingService/PauseSubscription" in names and any(
            n.startswith("publish ") for n in names) else None

    names = await wait_until(grpc_spans, timeout_s=30)
    assert "db.transaction" in names

    # usage: the event's span continues the producer's trace; the batch span links to it
    trace_id, traceparent = _traceparent()
    at = to_us(sub.start_at.ToDatetime(timezone.utc)) + 1_000_000
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, [(sub.id, avro(tenant.id, sub.id, "1", at))],
                            [("traceparent", traceparent.encode())])
    got = await wait_until(lambda: _async(_of_trace(spans, trace_id)), timeout_s=60)
    assert [s.name for s in got] == ["usage event"]
    assert got[0].parent.span_id == int(traceparent.split("-")[2], 16)


async def _async(value):
    return value


async def test_logs_carry_trace_and_tenant_and_never_an_api_key(roles, service, stub, tenant, migrated, channel):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        _, sub = await _setup(stub, tenant)
        wrong_key = "bk_" + secrets.token_urlsafe(32)
        for md in (tenant.md, (("authorization", f"Bearer {wrong_key}"),),
                   (("authorization", f"Bearer {tenant.api_key}x"),)):
            try:
                await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=md)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        # a refused command logs inside its span, for its tenant
        trace_id, traceparent = _traceparent()
        create = command(tenant.id, sub.id, "CreateSubscription",
                         {"customer_id": "c", "plan_id": str(uuid.uuid4()), "activate": True, "metadata": {}})
        await asyncio.to_thread(produce, migrated, migrated.topics.subscription_commands, [(sub.id, create)],
                                [("traceparent", traceparent.encode())])

        async def rejected():
            return [r for r in map(json.loads, stream.getvalue().splitlines())
                    if r["msg"] == "command rejected" and r.get("trace_id") == trace_id]
        line = (await wait_until(rejected, timeout_s=60))[0]
        assert line["tenant_id"] == tenant.id and len(line["span_id"]) == 16
        # even a careless log call of a key is masked
        logging.getLogger("billing.test").warning("key was %s", tenant.api_key)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    assert text
    refused = [r for r in map(json.loads, text.splitlines()) if r["msg"] == "unauthenticated call refused"]
    assert len(refused) == 2 and all(r["method"] == "GetSubscription" for r in refused)
    for secret in (tenant.api_key, wrong_key, tenant.api_key[3:], wrong_key[3:]):
        assert secret not in text
    assert "key was bk_[redacted]" in text


class _LagRecorder:
    def __init__(self):
        self.current: dict[tuple[str, int], int] = {}
        self.history: list[tuple[tuple[str, int], int]] = []
        self.forgotten: set[tuple[str, int]] = set()
        self.messages = 0

    def batch(self, messages, dead_letters, counters, seconds):
        self.messages += messages

    def lag(self, topic, partition, messages):
        self.current[(topic, partition)] = messages
        self.history.append(((topic, partition), messages))

    def forget(self, topic, partition):
        self.forgotten.add((topic, partition))
        self.current.pop((topic, partition), None)


class _SlowStrategy:
    async def process(self, conn, batch):
        await asyncio.sleep(0.1)


async def test_lag_per_partition_rises_while_behind_and_returns_to_zero(migrated):
    import asyncpg

    from billing.store.db import init_connection
    from tests.integration.test_consumer_runner import make_runner, new_topic
    from tests.integration.test_consumer_runner import produce as produce_to

    topic = new_topic(migrated, partitions=3)  # partition 2 stays empty: reported too, at 0
    await asyncio.to_thread(produce_to, migrated, topic, [(0, f"m{i}") for i in range(20)] + [(1, "x")])
    pool = await asyncpg.create_pool(migrated.worker_database_url, min_size=1, max_size=2, init=init_connection)
    recorder = _LagRecorder()
    runner = make_runner(migrated, pool, topic, f"lag-{uuid.uuid4().hex[:8]}", _SlowStrategy(),
                         observer=recorder, lag_interval_s=0.05, max_batch_size=1)
    task = asyncio.create_task(runner.run())
    try:
        await wait_until(lambda: _async(recorder.messages == 21 and recorder.current == {
            (topic, 0): 0, (topic, 1): 0, (topic, 2): 0}), timeout_s=60)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 15)
        await pool.close()
    behind = [lag for tp, lag in recorder.history if tp == (topic, 0)]
    assert max(behind) >= 10, behind  # worked off one message at a time: visibly behind, then caught up
    assert behind == sorted(behind, reverse=True)
    assert recorder.forgotten == {(topic, 0), (topic, 1), (topic, 2)} and not recorder.current  # series leave with the partitions


async def test_usage_producer_client_sends_the_current_trace(migrated, spans):
    from producers.usage_client import UsageProducer
    from tests.integration.test_consumer_runner import new_topic

    topic = new_topic(migrated, partitions=1)
    with UsageProducer(migrated, topic=topic) as usage:
        with tracing.tracer.start_as_current_span("metering") as span:
            usage.send("traced-1", uuid.uuid4(), uuid.uuid4(), "calls", "1", 1_700_000_000_000_000)
        usage.send("untraced-1", uuid.uuid4(), uuid.uuid4(), "calls", "1", 1_700_000_000_000_000)
    reader = TopicReader(migrated, topic)
    try:
        msgs = await asyncio.to_thread(reader.until, lambda ms: len(ms) >= 2, 30)
    finally:
        reader.close()
    traced, untraced = (dict(m.headers()) for m in msgs)
    assert traced["traceparent"].decode().split("-")[1] == format(span.get_span_context().trace_id, "032x")
    assert "traceparent" not in untraced and "content-type" in untraced


async def test_a_billing_run_is_one_trace_from_the_call_to_the_invoice_request(roles, spans, stub, tenant,
                                                                             migrated):
    """RunBilling with a traceparent -> the run request through the outbox -> the billing
    consumer's run span, its chunk transactions -> the invoice request on its topic."""
    from tests.integration.test_billing_runs import _completed, _sub_started, _usage_plan

    plan = await _usage_plan(stub, tenant)
    await _sub_started(stub, tenant, plan, days_ago=40)
    trace_id, traceparent = _traceparent()
    async with running_roles(migrated, ("billing",)):
        run = (await stub.RunBilling(pb.RunBillingRequest(request_id=str(uuid.uuid4())),
                                     metadata=tenant.md + (("traceparent", traceparent),))).run
        await _completed(stub, tenant, run.id)
        reader = TopicReader(migrated, migrated.topics.invoice_requests)
        try:
            def mine(ms):
                return [m for m in ms if dict(m.headers() or []).get("tenant-id") == tenant.id.encode()]
            msgs = mine(await asyncio.to_thread(reader.until, lambda ms: mine(ms), 60))
        finally:
            reader.close()
    assert msgs and all(dict(m.headers())["traceparent"].decode().split("-")[1] == trace_id for m in msgs)

    async def whole_trace():
        names = {s.name for s in _of_trace(spans, trace_id)}
        wanted = {"billing.v1.BillingService/RunBilling", f"publish {migrated.topics.billing_runs}", "billing run",
                  "db.transaction", f"publish {migrated.topics.invoice_requests}"}
        return names if wanted <= names else None

    await wait_until(whole_trace, timeout_s=30)
    run_span = next(s for s in _of_trace(spans, trace_id) if s.name == "billing run")
    assert run_span.attributes["billing.run_id"] == run.id and run_span.attributes["billing.tenant_id"] == tenant.id

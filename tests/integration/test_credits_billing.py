"""Credits in billing runs: gRPC grants -> RunBilling -> invoice requests on Kafka with the
credit lines last; a retried chunk and a resumed run never burn twice; grants through the
command topic. Amounts worked out by hand in the comments."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from billing import codec
from billing.services import billing_runs as billing_service
from billing.services.context import Caller
from billing.services.period_close import CloseContext, bill_chunk
from billing.services.run_execution import execute_run
from billing.store import subscriptions as subscription_store
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_runs import _completed, _read_invoices, _time
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import TopicReader, command, produce, running_roles, wait_until


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    async with running_roles(migrated, ("billing", "relay", "commands")) as svc:
        yield svc


async def _in_arrears_sub(stub, tenant, customer: str, days_ago: int) -> pb.Subscription:
    plan = (await stub.CreatePlan(plan_request(base_fee="30.00", trial_days=0, usage_charges=[],
                                               billing_timing=pb.BILLING_TIMING_IN_ARREARS),
                                  metadata=tenant.md)).plan
    start = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id=customer, plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription


async def _grant(stub, tenant, **kw) -> pb.CreditGrant:
    kw.setdefault("effective_at", ts(datetime.now(timezone.utc) - timedelta(days=100)))
    return (await stub.CreateCreditGrant(pb.CreateCreditGrantRequest(request_id=rid(), **kw),
                                         metadata=tenant.md)).grant


def _read_events(settings, key: str, wanted: int) -> list[dict]:
    reader = TopicReader(settings, settings.topics.subscription_events)

    def credit_events(ms):
        return [e for e in (codec.decode(codec.Schema.SUBSCRIPTION_EVENT, m.value()) for m in ms
                            if m.key() == key.encode()) if e["type"].startswith("credit.")
                and e["type"] != "credit.granted"]
    try:
        reader.until(lambda ms: len(credit_events(ms)) >= wanted)
        return credit_events(reader.messages)
    finally:
        reader.close()


async def test_a_run_burns_grants_last_in_the_documented_order(kafka_roles, migrated, stub, tenant, admin_conn):
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    sub = await _in_arrears_sub(stub, tenant, customer, days_ago=70)  # two monthly periods have ended
    p1_start = sub.current_period_start.ToDatetime(timezone.utc)
    p1_end = sub.current_period_end.ToDatetime(timezone.utc)
    g_sub = await _grant(stub, tenant, subscription_id=sub.id, amount="25.00", priority=1)
    g_cust = await _grant(stub, tenant, customer_id=customer, currency="EUR", amount="10.00",
                          expires_at=ts(datetime.now(timezone.utc) + timedelta(days=60)))
    g_usd = await _grant(stub, tenant, customer_id=customer, currency="USD", amount="50.00")  # another currency
    g_exp = await _grant(stub, tenant, subscription_id=sub.id, amount="4.00")
    # Expired a day before the first period's end (set directly: the API takes only future expiries).
    await admin_conn.execute("update credit_grants set expires_at = $2 where id = $1", uuid.UUID(g_exp.id),
                             p1_end - timedelta(days=1))

    run = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), idempotency_key=f"credits-{sub.id}"),
                                 metadata=tenant.md)).run
    done = await _completed(stub, tenant, run.id)
    assert (done.subscriptions_billed, done.subscriptions_failed) == (1, 0)
    # Period 1: 30.00; g_exp expired (4.00); g_cust (priority 0) 10.00, then g_sub 20.00 -> 0.00.
    # Period 2: 30.00; g_sub's last 5.00 -> 25.00. The run's total: 25.00.
    assert [(t.currency, t.amount) for t in done.totals] == [("EUR", "25.00")]

    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 2)
    invoices = sorted((inv for _, inv in found), key=lambda inv: inv["period_start_us"])
    assert _time(invoices[0]["period_start_us"]) == p1_start
    lines = [[(ln["kind"], ln["amount"], ln["description"].split(" (")[0]) for ln in inv["lines"]] for inv in invoices]
    assert lines == [
        [("base_fee", "30.00", lines[0][0][2]), ("credit", "-10.00", f"Credit grant {g_cust.id}"),
         ("credit", "-20.00", f"Credit grant {g_sub.id}")],
        [("base_fee", "30.00", lines[1][0][2]), ("credit", "-5.00", f"Credit grant {g_sub.id}")],
    ]
    assert [(inv["subtotal"], inv["total"]) for inv in invoices] == [("0.00", "0.00"), ("25.00", "25.00")]
    credit_line = invoices[0]["lines"][1]
    assert (_time(credit_line["period_start_us"]), _time(credit_line["period_end_us"])) == (p1_start, p1_end)

    grants = {g.id: g for g in (await stub.ListCreditGrants(pb.ListCreditGrantsRequest(customer_id=customer),
                                                            metadata=tenant.md)).grants}
    balances = {gid: (grants[gid].applied, grants[gid].expired, grants[gid].remaining, grants[gid].status)
                for gid in (g_sub.id, g_cust.id, g_exp.id, g_usd.id)}
    assert balances == {g_sub.id: ("25.00", "0", "0.00", "depleted"), g_cust.id: ("10.00", "0", "0.00", "depleted"),
                        g_exp.id: ("0", "4.00", "0.00", "expired"), g_usd.id: ("0", "0", "50.00", "active")}
    for g in grants.values():  # granted = applied + expired + voided + remaining
        assert D(g.granted) == D(g.applied) + D(g.expired) + D(g.voided) + D(g.remaining)

    events = await asyncio.to_thread(_read_events, migrated, sub.id, 6)
    seen = sorted((e["type"], e["data"]["grant_id"], e["data"].get("amount")) for e in events)
    assert seen == sorted([("credit.expired", g_exp.id, "4.00"), ("credit.applied", g_cust.id, "10.00"),
                           ("credit.depleted", g_cust.id, "10.00"), ("credit.applied", g_sub.id, "20.00"),
                           ("credit.applied", g_sub.id, "5.00"), ("credit.depleted", g_sub.id, "5.00")])

    # A second run for the same time bills nothing and burns nothing.
    again = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), idempotency_key=f"credits-{sub.id}-2",
                                                        as_of=done.as_of), metadata=tenant.md)).run
    assert (await _completed(stub, tenant, again.id)).subscriptions_billed == 0
    assert await admin_conn.fetchval("select count(*) from credit_entries where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 4  # 3 applications + 1 expiry


async def test_a_retried_chunk_and_a_resumed_run_do_not_burn_twice(service, stub, tenant, admin_conn):
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    sub = await _in_arrears_sub(stub, tenant, customer, days_ago=40)
    grant = await _grant(stub, tenant, subscription_id=sub.id, amount="50.00")
    caller = Caller(uuid.UUID(tenant.id), "test")
    stale = await subscription_store.get(admin_conn, uuid.UUID(tenant.id), uuid.UUID(sub.id))
    as_of = datetime.now(timezone.utc)
    run = await billing_service.run_billing(service.db, caller, rid(), "", as_of)
    done = await execute_run(service.db, caller.tenant_id, run.id)
    # 30.00 - 30.00 of the 50.00 credit = 0.00; 20.00 remains.
    assert done.totals == (("EUR", "0.00"),)
    # The run executed again (a redelivered request): nothing is due, nothing burned.
    assert (await execute_run(service.db, caller.tenant_id, run.id)).totals == (("EUR", "0.00"),)
    # The same chunk computed again from the subscription as it was read before the first
    # commit (a retried transaction): the period was billed, so no invoice and no application.
    async with service.db.tenant_tx(caller.tenant_id) as conn:
        chunk = await bill_chunk(conn, caller, CloseContext(caller.tenant_id, run.id, as_of), [stale])
    assert chunk.billed == 0 and chunk.skipped == 1
    rows = await admin_conn.fetch("select kind, amount, invoice_request_id from credit_entries where grant_id = $1",
                                  uuid.UUID(grant.id))
    assert [(r["kind"], str(r["amount"])) for r in rows] == [("applied", "30.00")]
    assert str(await admin_conn.fetchval("select remaining from credit_grants where id = $1",
                                         uuid.UUID(grant.id))) == "20.00"
    assert await admin_conn.fetchval("select count(*) from outbox where tenant_id = $1 and stream = "
                                     "'invoice_requests' and key = convert_to($2, 'UTF8')", uuid.UUID(tenant.id),
                                     str(rows[0]["invoice_request_id"])) == 1


async def test_a_grant_through_the_command_topic(kafka_roles, migrated, stub, tenant, admin_conn):
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    sub = await _in_arrears_sub(stub, tenant, customer, days_ago=5)
    grant_id, command_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"amount": "15.00", "currency": "", "customer_id": "", "priority": 3, "effective_at_us": None,
            "expires_at_us": None, "grant_id": grant_id, "description": "via kafka"}
    msg = command(tenant.id, sub.id, "CreateCreditGrant", body, command_id)
    bad = command(tenant.id, sub.id, "CreateCreditGrant", {**body, "amount": "-1", "grant_id": ""}, str(uuid.uuid4()))
    produce(migrated, migrated.topics.subscription_commands, [(sub.id, msg), (sub.id, msg), (sub.id, bad)])

    async def granted():
        return await admin_conn.fetchrow("select amount, priority, currency, description from credit_grants "
                                         "where id = $1", uuid.UUID(grant_id))
    row = await wait_until(granted)
    assert (str(row["amount"]), row["priority"], row["currency"], row["description"]) == (
        "15.00", 3, "EUR", "via kafka")
    events = await asyncio.to_thread(_read_events_any, migrated, sub.id, ("credit.granted", "command.rejected"))
    granted_events = [e for e in events if e["type"] == "credit.granted"]
    assert len(granted_events) == 1 and granted_events[0]["command_id"] == command_id  # the duplicate applied once
    rejected = [e for e in events if e["type"] == "command.rejected"]
    assert rejected and "amount" in rejected[0]["reason"]


def _read_events_any(settings, key: str, types: tuple[str, ...]) -> list[dict]:
    reader = TopicReader(settings, settings.topics.subscription_events)

    def mine(ms):
        return [e for e in (codec.decode(codec.Schema.SUBSCRIPTION_EVENT, m.value()) for m in ms
                            if m.key() == key.encode()) if e["type"] in types]
    try:
        reader.until(lambda ms: {e["type"] for e in mine(ms)} >= set(types))
        return mine(reader.messages)
    finally:
        reader.close()


async def test_a_period_a_change_closes_is_credited_too(service, stub, tenant, admin_conn):
    """A pause after the period ended bills that period first (through the API role), as a
    run would: its invoice request carries the credit line and the ledger records it."""
    sub = await _in_arrears_sub(stub, tenant, f"cust-{uuid.uuid4().hex[:6]}", days_ago=40)
    grant = await _grant(stub, tenant, subscription_id=sub.id, amount="12.00")
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    payloads = await admin_conn.fetch("select payload from outbox where tenant_id = $1 and stream = "
                                      "'invoice_requests' order by id", uuid.UUID(tenant.id))
    invoices = [inv for inv in (codec.decode(codec.Schema.INVOICE_REQUEST, bytes(r["payload"])) for r in payloads)
                if inv["subscription_id"] == sub.id]
    # 30.00 for the ended period - 12.00 of credit = 18.00.
    assert [(ln["kind"], ln["amount"]) for ln in invoices[0]["lines"]] == [("base_fee", "30.00"),
                                                                          ("credit", "-12.00")]
    assert invoices[0]["total"] == "18.00"
    row = await admin_conn.fetchrow("select kind, amount, run_id, invoice_request_id from credit_entries "
                                    "where grant_id = $1", uuid.UUID(grant.id))
    assert (row["kind"], str(row["amount"]), row["run_id"]) == ("applied", "12.00", uuid.UUID(int=0))
    assert str(row["invoice_request_id"]) == invoices[0]["invoice_request_id"]

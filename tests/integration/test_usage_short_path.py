"""The short path of usage ingestion (billing/services/usage_ingest.py) against the full chain
of checks, on real PostgreSQL: for a random mix of events over subscriptions in every state,
`prepare` must reject and accept exactly what the full chain alone would, with the same
reasons, details, periods and staging rows; with the short path's module as written and as
compiled by `make install` (billing/native.py)."""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from billing import native
from billing.services import usage_ingest, usage_short
from billing.services.usage import PlanCache, UsageEvent, UsageLimits, to_us
from billing.store import usage as usage_store
from billing.store.db import set_tenant
from billing.v1 import billing_pb2 as pb
from tests.integration.test_subscriptions_api import rid
from tests.integration.test_usage_ingest import _setup, app_conn  # noqa: F401 - a fixture


async def _subscriptions(stub, tenant) -> list:
    plain_plan, plain = await _setup(stub, tenant)
    subs = [plain]
    for change in ("cancel", "pause"):
        sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
            request_id=rid(), customer_id="c", plan_id=plain_plan.id, activate=True), metadata=tenant.md)).subscription
        if change == "cancel":
            await stub.CancelSubscription(pb.CancelSubscriptionRequest(
                request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)
        else:
            await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
        subs.append(sub)
    pending = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plain_plan.id, activate=False), metadata=tenant.md)).subscription
    return subs + [pending]


def _events(rng: random.Random, tenant_id: str, subs: list, now: datetime, n: int) -> list[UsageEvent]:
    texts = [s.id for s in subs] + [str(uuid.uuid4()), "not-a-uuid"]
    starts = [s.start_at.ToDatetime(timezone.utc) if s.HasField("start_at") else now for s in subs]
    ends = [s.current_period_end.ToDatetime(timezone.utc) if s.HasField("current_period_end") else now for s in subs]
    offsets = [timedelta(seconds=-1), timedelta(0), timedelta(seconds=1), timedelta(hours=5), timedelta(minutes=4),
               timedelta(minutes=6), timedelta(days=-34), timedelta(days=-36), timedelta(days=40)]
    def pick(good, *bad):  # mostly the good value, so that many events pass every check
        return good if rng.random() < 0.8 else rng.choice([good, *bad])

    out = []
    for i in range(n):
        k = pick(0, *range(len(texts)))
        at = pick(now - timedelta(seconds=30), starts[k % len(subs)], ends[k % len(subs)], now) + pick(
            timedelta(0), *offsets)
        out.append(UsageEvent(
            pick(str(uuid.uuid4()), f"e-{i}", "", "x" * 201, "a\x00b", "y" * 200), tenant_id, texts[k],
            pick("calls", "seats", "nope"), pick(str(rng.randint(0, 99)), "2.5", "-1", "abc", "1e3", "１",
                                                  "1234567890123456", "0.0000000000001"),
            to_us(at), pick(None, {}, {"user": "u"}, {"k": "\x00"})))
    return out + [out[0]]  # a repeat: the same event twice in a batch


@pytest.fixture(params=["pure", "compiled"])
def short_path(request, monkeypatch):
    module = usage_short
    if request.param == "compiled":
        module = native.compiled(usage_short)
        if module is usage_short:
            if native.build_file(usage_short.__name__) is not None:
                pytest.fail("the compiled build of billing/services/usage_short.py is stale: run `make install`")
            pytest.skip("no compiled build of billing/services/usage_short.py (make install builds it when it can)")
    monkeypatch.setattr(usage_ingest, "SHORT_PATH", module)
    return module


async def test_the_short_path_accepts_and_rejects_exactly_as_the_full_chain(stub, tenant, app_conn,  # noqa: F811
                                                                             short_path):
    subs = await _subscriptions(stub, tenant)
    tid = uuid.UUID(tenant.id)
    now = datetime.now(timezone.utc) + timedelta(minutes=1)
    events = _events(random.Random(24), tenant.id, subs, now, 3000)
    limits, plans = UsageLimits(), PlanCache()
    async with app_conn.transaction():
        got = await usage_ingest.prepare(app_conn, events, now_us=to_us(now), limits=limits, plans=plans)
        await set_tenant(app_conn, tid)
        known, fast, on_clock = await usage_ingest._known_subscriptions(
            app_conn, tid, {e.subscription_id for e in events}, to_us(now), limits, plans)
    assert fast, "the plain subscription takes the short path"
    want = usage_ingest.IngestResult(received=len(events))
    rows = usage_store.Batch()
    for i, e in enumerate(events):
        usage_ingest._check_one(i, e, known, on_clock, limits, rows, want, True)
    assert got.rejected == want.rejected
    assert got.periods == want.periods
    batch = got.pending[tid]
    assert (batch.indexes, batch.rows) == (rows.indexes, rows.rows)
    accepted, reasons = len(batch.rows), {r.reason for r in got.rejected}
    assert accepted > 100 and len(reasons) >= 10, (accepted, reasons)

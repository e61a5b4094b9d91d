"""The usage strategy decodes the next batch ahead (consumers/usage.py, `predecode`, called by
the runner while the current batch commits): the result is used only for exactly the
messages it was decoded from, and only once."""
from __future__ import annotations

from billing.services.usage import PlanCache, UsageLimits
from consumers.usage import UsageStrategy
from tests.unit.test_usage_payloads import avro, msg
from billing.services.usage_ingest import as_event


def _batch(n: int, first: int = 0) -> list:
    return [msg(avro(i), i) for i in range(first, first + n)] + [msg(b"junk", first + n)]


def test_a_batch_decoded_ahead_is_used_once_for_the_same_messages():
    strategy = UsageStrategy(UsageLimits(), PlanCache())
    batch = _batch(5)
    strategy.predecode(batch)
    ahead = strategy._ahead[0][1]
    taken = list(batch)  # the runner takes a new list of the same messages
    assert strategy._decode(taken) is ahead
    events, positions, dead = ahead
    assert [as_event(e).event_id for e in events] == [f"evt-{i}" for i in range(5)] and positions == list(range(5))
    assert [d.message for d in dead] == [batch[5]]
    again = strategy._decode(taken)  # a retry of the batch: decoded afresh (process appends to `dead`)
    assert again is not ahead and again == ahead


def test_other_messages_are_decoded_afresh():
    strategy = UsageStrategy(UsageLimits(), PlanCache())
    batch = _batch(5)
    strategy.predecode(batch)
    other = batch[:4] + [msg(avro(9), 4)] + batch[5:]  # same length, one message differs
    events, _, _ = strategy._decode(other)
    assert [as_event(e).event_id for e in events] == ["evt-0", "evt-1", "evt-2", "evt-3", "evt-9"]
    strategy.predecode(batch)
    shorter = batch[:3]  # a rebalance took messages away
    assert [as_event(e).event_id for e in strategy._decode(shorter)[0]] == ["evt-0", "evt-1", "evt-2"]


def test_a_failed_decode_ahead_leaves_nothing_behind(monkeypatch):
    strategy = UsageStrategy(UsageLimits(), PlanCache())

    def broken(batch):
        raise OSError("schema registry unreachable")

    monkeypatch.setattr("consumers.usage.decode_batch", broken)
    strategy.predecode(_batch(2))
    assert strategy._ahead == []


def test_the_batch_after_next_decoded_before_the_taken_one_is_processed_keeps_both(monkeypatch):
    """The runner takes batch 1 and, while its transaction opens, fetches and decodes batch 2:
    batch 1 still uses its own decoding ahead, and batch 2 its own after it; nothing is
    decoded twice."""
    strategy = UsageStrategy(UsageLimits(), PlanCache())
    first, second = _batch(3), _batch(3, first=10)
    strategy.predecode(first)
    strategy.predecode(second)
    calls = []
    real = __import__("consumers.usage", fromlist=["decode_batch"]).decode_batch
    monkeypatch.setattr("consumers.usage.decode_batch", lambda b: calls.append(b) or real(b))
    assert [as_event(e).event_id for e in strategy._decode(list(first))[0]] == ["evt-0", "evt-1", "evt-2"]
    assert [as_event(e).event_id for e in strategy._decode(list(second))[0]] == ["evt-10", "evt-11", "evt-12"]
    assert calls == [] and strategy._ahead == []
    third = _batch(2, first=20)
    for b in (first, second, third):  # at most two are kept: the oldest goes
        strategy.predecode(b)
    assert [m for m, _ in strategy._ahead] == [second, third]

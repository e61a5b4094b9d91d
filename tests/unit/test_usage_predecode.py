"""The usage strategy decodes the next batch ahead, a part at a time (consumers/usage.py,
`predecode(messages, start)`, called by the runner with each run of messages fetched while
the current batch commits): a part is used only for exactly the messages it was decoded
from, in order, and only once; whatever is not covered is decoded in `process`."""
from __future__ import annotations

from billing.services.usage import PlanCache, UsageLimits
from consumers.usage import UsageStrategy
from consumers.usage_payloads import decode_batch
from tests.unit.test_usage_payloads import avro, msg


def _batch(n: int, first: int = 0) -> list:
    return [msg(avro(i), i) for i in range(first, first + n)] + [msg(b"junk", first + n)]


def _ids(decoded) -> list[str]:
    return [e.event_id for e in decoded[0]]


def _strategy() -> UsageStrategy:
    return UsageStrategy(UsageLimits(), PlanCache())


def test_a_batch_decoded_ahead_in_one_part_is_used_once_for_the_same_messages():
    strategy = _strategy()
    batch = _batch(5)
    strategy.predecode(batch, 0)
    ahead = strategy._ahead[-1].parts[0][1]
    taken = list(batch)  # the runner takes a new list of the same messages
    assert strategy._decode(taken) is ahead
    events, positions, dead = ahead
    assert [e.event_id for e in events] == [f"evt-{i}" for i in range(5)] and positions == list(range(5))
    assert [d.message for d in dead] == [batch[5]]
    again = strategy._decode(taken)  # a retry of the batch: decoded afresh (process appends to `dead`)
    assert again is not ahead and again == ahead


def test_parts_are_joined_with_the_positions_of_the_whole_batch():
    strategy = _strategy()
    batch = _batch(3) + _batch(4, first=10)  # a bad message in the middle and at the end
    strategy.predecode(batch[:2], 0)
    strategy.predecode(batch[2:6], 2)
    strategy.predecode(batch[6:], 6)
    assert strategy._decode(list(batch)) == decode_batch(batch)
    assert not strategy._ahead  # used once


def test_what_the_parts_do_not_cover_is_decoded_now():
    strategy = _strategy()
    batch = _batch(6)
    strategy.predecode(batch[:3], 0)
    assert strategy._decode(batch) == decode_batch(batch)  # fetched after the commit: not decoded ahead
    strategy.predecode(batch[:2], 0)
    strategy.predecode(batch[3:5], 3)  # not next to the part before (a message was dropped): ignored
    assert len(strategy._ahead[-1].parts) == 1
    assert strategy._decode(batch) == decode_batch(batch)


def test_other_messages_are_decoded_afresh():
    strategy = _strategy()
    batch = _batch(5)
    strategy.predecode(batch, 0)
    other = batch[:4] + [msg(avro(9), 4)] + batch[5:]  # same length, one message differs
    assert _ids(strategy._decode(other)) == ["evt-0", "evt-1", "evt-2", "evt-3", "evt-9"]
    strategy.predecode(batch, 0)
    shorter = batch[:3]  # a rebalance took messages away
    assert _ids(strategy._decode(shorter)) == ["evt-0", "evt-1", "evt-2"]


def test_the_next_batch_begun_before_the_current_one_is_processed():
    """The runner starts decoding the next batch as soon as the current one is taken, which
    may be before the current one's `process` reads its own parts."""
    strategy = _strategy()
    current, following = _batch(3), _batch(3, first=20)
    strategy.predecode(current, 0)
    strategy.predecode(following[:2], 0)
    assert strategy._decode(current) == decode_batch(current)
    strategy.predecode(following[2:], 2)
    assert strategy._decode(following) == decode_batch(following)
    assert not strategy._ahead


def test_a_failed_part_leaves_the_rest_to_process(monkeypatch):
    strategy = _strategy()
    batch = _batch(4)
    strategy.predecode(batch[:2], 0)

    def broken(batch, strings=None):
        raise OSError("schema registry unreachable")

    monkeypatch.setattr("consumers.usage.decode_batch", broken)
    strategy.predecode(batch[2:4], 2)
    monkeypatch.undo()
    strategy.predecode(batch[4:], 4)  # after the failed part: not used
    assert len(strategy._ahead[-1].parts) == 1
    assert strategy._decode(batch) == decode_batch(batch)

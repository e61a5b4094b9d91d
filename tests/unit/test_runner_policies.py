"""The consumer runner's pure parts: settings, batch assembly, positions and lag, retries."""
from __future__ import annotations

import asyncpg
import pytest

from consumers.batches import FetchBuffer, next_offsets, partitions_of, topics_of, without
from consumers.dlq import DeadLetterDeliveryError
from consumers.positions import Positions
from consumers.retry import Retry, is_retriable
from consumers.runner_config import Batching, ConsumerSource, DeadLetterPolicy
from consumers.strategy import Backpressure, Message


def msg(partition: int, offset: int, topic: str = "t") -> Message:
    return Message(topic, partition, offset, None, b"v", {}, None)


# ------------------------------------------------------------------------- settings

def test_source_forces_offsets_in_postgres():
    source = ConsumerSource({"bootstrap.servers": "x", "enable.auto.commit": True}, ["t"], "g")
    assert source.topics == ("t",)
    cfg = source.client_config()
    assert cfg["group.id"] == "g" and cfg["enable.auto.commit"] is False and cfg["enable.auto.offset.store"] is False


def test_source_refusals_name_the_problem():
    with pytest.raises(ValueError, match="topics"):
        ConsumerSource({}, (), "g")
    with pytest.raises(ValueError, match="group.id"):
        ConsumerSource({"group.id": "other"}, ("t",), "g")
    with pytest.raises(ValueError, match="eager"):
        ConsumerSource({"partition.assignment.strategy": "cooperative-sticky"}, ("t",), "g")


def test_batching_and_dead_letter_refusals():
    with pytest.raises(ValueError, match="max_size"):
        Batching(max_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        Batching(max_wait_s=0)
    with pytest.raises(ValueError, match="producer_config"):
        DeadLetterPolicy(topic="dlq")
    assert DeadLetterPolicy().topic is None  # no topic: dead-lettering is a strategy's bug


# ------------------------------------------------------------------- batch assembly

def test_next_offsets_are_the_last_offset_plus_one_per_partition():
    batch = [msg(0, 5), msg(1, 2), msg(0, 7), msg(0, 6), msg(1, 3, topic="u")]
    assert next_offsets(batch) == {("t", 0): 8, ("t", 1): 3, ("u", 1): 4}
    assert topics_of(batch) == "t,u"
    assert partitions_of(batch) == {("t", 0), ("t", 1), ("u", 1)}
    one_topic = batch[:4] + [msg(2, 1), msg(1, 9)]  # a partition's runs apart, and out of order
    assert next_offsets(one_topic) == {("t", 0): 8, ("t", 1): 10, ("t", 2): 2}
    assert partitions_of(one_topic) == {("t", 0), ("t", 1), ("t", 2)}
    assert next_offsets([]) == {} and partitions_of([]) == set()


def test_buffer_takes_batches_in_order_and_reports_room():
    buffer = FetchBuffer()
    buffer.extend((msg(0, i) for i in range(5)), 1.0)
    assert buffer.room(8) == 3 and buffer.room(4) == 0
    assert [m.offset for m in buffer.take(3)] == [0, 1, 2]
    assert [m.offset for m in buffer.take(3)] == [3, 4]
    assert len(buffer) == 0 and buffer.take(3) == []


def test_buffer_since_is_when_its_oldest_message_was_fetched():
    buffer = FetchBuffer()
    assert buffer.since is None
    buffer.extend([], 1.0)
    assert buffer.since is None  # nothing fetched
    buffer.extend([msg(0, 0)], 2.0)
    buffer.extend([msg(0, 1)], 3.0)
    assert buffer.since == 2.0  # a later fetch does not make the oldest message younger
    batch = buffer.take(10)
    assert buffer.since is None
    buffer.extend([msg(0, 2)], 5.0)
    buffer.put_back(batch, set())  # a fenced batch comes back as old as it was
    assert buffer.since == 2.0 and len(buffer) == 3
    buffer.drop({("t", 0)})
    assert buffer.since is None
    buffer.extend([msg(1, 0)], 6.0)
    buffer.clear()
    assert buffer.since is None


def test_a_fenced_batch_puts_back_the_other_partitions_first():
    buffer = FetchBuffer()
    batch = [msg(0, 0), msg(1, 0), msg(0, 1), msg(1, 1)]
    buffer.extend([msg(1, 2), msg(0, 2)], 1.0)
    buffer.put_back(batch, {("t", 0)})
    assert [(m.partition, m.offset) for m in buffer.take(10)] == [(1, 0), (1, 1), (1, 2), (0, 2)]


def test_revoked_partitions_leave_the_buffer_and_the_held_batch():
    buffer = FetchBuffer()
    buffer.extend([msg(0, 0), msg(1, 0), msg(2, 0)], 1.0)
    buffer.drop({("t", 1)})
    assert [m.partition for m in buffer.take(10)] == [0, 2]
    assert [m.partition for m in without([msg(0, 0), msg(1, 0)], {("t", 0)})] == [1]


# ------------------------------------------------------------------ positions, lag

def test_fencing_expects_owned_partitions_only():
    positions = Positions()
    positions.assigned({("t", 0): 10, ("t", 1): None})
    assert positions.expected([("t", 0), ("t", 1), ("t", 2)]) == {("t", 0): 10, ("t", 1): None}
    positions.stored({("t", 0): 12})
    positions.revoked({("t", 1)})
    assert positions.expected([("t", 0), ("t", 1)]) == {("t", 0): 12}
    assert positions.owned() == [("t", 0)]


def test_lag_is_the_high_watermark_minus_the_stored_offset():
    positions = Positions()
    positions.assigned({("t", 0): 10, ("t", 1): None, ("t", 2): 0})
    positions.watermarks({("t", 0): (0, 25), ("t", 1): (4, 9), ("t", 3): (0, 5)})
    # nothing stored on partition 1: the whole retained log (from the low mark) is ahead;
    # no watermark for 2, and 3 is not owned
    assert dict(positions.lag([("t", 0), ("t", 1), ("t", 2), ("t", 3)])) == {("t", 0): 15, ("t", 1): 5}
    positions.revoked({("t", 0)})
    assert positions.lag([("t", 0)]) == []


# --------------------------------------------------------------------------- retries

def test_backoff_doubles_up_to_the_cap_with_jitter_below():
    retry = Retry(initial_s=0.1, max_s=1.0)
    assert [retry.raw_delay(a) for a in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert retry.delay(3, jitter=lambda lo, hi: lo) == pytest.approx(0.32)
    assert retry.delay(3, jitter=lambda lo, hi: hi) == pytest.approx(0.4)


def test_backpressure_asks_for_at_least_its_own_wait():
    retry = Retry(initial_s=0.1, max_s=1.0)
    assert retry.delay(1, Backpressure(retry_after_s=3.0), jitter=lambda lo, hi: hi) == 3.0
    assert retry.delay(4, Backpressure(retry_after_s=0.01), jitter=lambda lo, hi: hi) == pytest.approx(0.8)


def test_transient_failures_are_retried_bugs_are_not():
    for exc in (Backpressure(), DeadLetterDeliveryError("x"), ConnectionResetError(), TimeoutError(),
                asyncpg.TooManyConnectionsError(), asyncpg.SerializationError(), asyncpg.DeadlockDetectedError()):
        assert is_retriable(exc), exc
    for exc in (ValueError("bug"), KeyError("x"), asyncpg.UniqueViolationError()):
        assert not is_retriable(exc), exc

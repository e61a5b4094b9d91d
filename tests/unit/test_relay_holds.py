"""The outbox relay's hold-and-park bookkeeping and message headers, without Kafka."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from confluent_kafka import KafkaError

from producers.relay_holds import Failure, HoldBook, PublishResult, key_hold, stream_hold
from producers.relay_publisher import message_headers

TENANT = uuid.UUID(int=7)


@dataclass(frozen=True)
class Row:
    id: int
    stream: str = "subscription_events"
    key: bytes | None = b"sub-1"
    tenant_id: uuid.UUID = TENANT
    headers: dict = field(default_factory=dict)


def book() -> HoldBook:
    return HoldBook(retry_backoff_s=1.0, max_retry_backoff_s=8.0)


def failed(row: Row, *, topic_level: bool = False, code: int | None = None, park: str | None = None) -> PublishResult:
    return PublishResult(failed=[Failure(row, "boom", topic_level, code=code, park_reason=park)])


def test_a_failed_row_holds_its_key_not_the_others():
    holds = book()
    holds.settle(failed(Row(1)), now=100.0)
    assert holds.held(Row(5), now=100.5)  # a later row of the same key waits
    assert not holds.held(Row(6, key=b"sub-2"), now=100.5)
    assert not holds.held(Row(7, stream="invoice_requests"), now=100.5)
    assert not holds.held(Row(5), now=101.0)  # retry time reached
    assert holds.next_retry_in(now=100.25) == 0.75


def test_a_keyless_row_holds_only_itself():
    holds = book()
    holds.settle(failed(Row(1, key=None)), now=0.0)
    assert holds.held(Row(1, key=None), now=0.5)
    assert not holds.held(Row(2, key=None), now=0.5)


def test_a_topic_failure_holds_the_whole_stream():
    holds = book()
    holds.settle(failed(Row(1), topic_level=True), now=0.0)
    assert holds.held(Row(9, key=b"any"), now=0.5)
    assert holds.held_streams(now=0.5) == ["subscription_events"]
    assert holds.held_streams(now=1.5) == []


def test_backoff_doubles_per_attempt_up_to_the_cap():
    holds = book()
    waits = []
    for attempt in range(6):
        now = attempt * 100.0
        holds.settle(failed(Row(1)), now=now)
        hold = holds.hold(key_hold(Row(1)))
        assert hold.attempts == attempt + 1
        waits.append(hold.retry_at - now)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_delivery_releases_the_key_and_the_stream():
    holds = book()
    holds.settle(failed(Row(1)), now=0.0)
    holds.settle(failed(Row(2, stream="billing_runs"), topic_level=True), now=0.0)
    holds.settle(PublishResult(delivered=[Row(1), Row(3, stream="billing_runs", key=b"k")]), now=0.1)
    assert holds.hold(key_hold(Row(1))) is None
    assert holds.hold(stream_hold("billing_runs")) is None
    assert holds.next_retry_in(now=0.1) is None


def test_a_refusal_among_others_is_retried_alone_then_parked():
    holds = book()
    holds.settle(failed(Row(4), code=KafkaError.MSG_SIZE_TOO_LARGE), now=0.0)
    assert holds.isolated(4)  # its next attempt is alone
    assert holds.held(Row(4), now=0.5)
    holds.settle(failed(Row(4), code=KafkaError.MSG_SIZE_TOO_LARGE, park="message_too_large"), now=2.0)
    # Parked: the database holds its key back from now on, not the book.
    assert not holds.isolated(4)
    assert holds.hold(key_hold(Row(4))) is None


def test_an_isolated_row_delivered_alone_is_released():
    holds = book()
    holds.settle(failed(Row(4), code=KafkaError.RECORD_LIST_TOO_LARGE), now=0.0)
    holds.settle(PublishResult(delivered=[Row(4)]), now=2.0)
    assert not holds.isolated(4)


def test_stale_holds_are_forgotten_and_a_new_leadership_starts_clean():
    holds = book()
    holds.settle(failed(Row(1)), now=0.0)
    holds.prune(now=1.0 + 2 * 8.0)  # not yet stale
    assert holds.hold(key_hold(Row(1))) is not None
    holds.prune(now=1.0 + 2 * 8.0 + 0.1)
    assert holds.hold(key_hold(Row(1))) is None
    holds.settle(failed(Row(2), code=KafkaError.INVALID_RECORD), now=0.0)
    holds.clear()
    assert not holds.isolated(2) and holds.hold(key_hold(Row(2))) is None


def test_settle_returns_one_hold_per_key_or_stream():
    holds = book()
    result = PublishResult(failed=[Failure(Row(1), "a", False), Failure(Row(2), "b", False),
                                   Failure(Row(3, key=b"other"), "c", False)])
    new = holds.settle(result, now=0.0)
    assert set(new) == {key_hold(Row(1)), key_hold(Row(3, key=b"other"))}
    assert new[key_hold(Row(1))].reason == "a"


def test_message_headers_replace_the_relays_own():
    row = Row(42, headers={"outbox-id": "forged", "tenant-id": "forged", "traceparent": "old", "x": "1"})
    headers = message_headers(row, {"traceparent": "new"})
    assert headers == [("x", "1"), ("outbox-id", "42"), ("tenant-id", str(TENANT)), ("traceparent", "new")]

"""The dead-letter limit, decided without Kafka or PostgreSQL."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from consumers.dlq_limit import DlqLimit, DlqLimitState, TooManyBadMessages, dead_flags
from consumers.strategy import DeadLetter, Message


def msg(offset: int, partition: int = 0) -> Message:
    return Message("t", partition, offset, None, b"v", {}, None)


def test_a_limit_names_the_bad_field():
    with pytest.raises(ValueError, match="max_bad_share"):
        DlqLimit(max_bad_share=1.5)
    with pytest.raises(ValueError, match="window"):
        DlqLimit(window=0)
    with pytest.raises(ValueError, match="min_sample"):
        DlqLimit(min_sample=0)
    with pytest.raises(ValueError, match="max_consecutive"):
        DlqLimit(max_consecutive=-1)


def test_the_limit_is_a_frozen_value():
    limit = DlqLimit(0.2, 50, 10)
    with pytest.raises(AttributeError):
        limit.window = 3  # type: ignore[misc]
    assert limit == DlqLimit(max_bad_share=0.2, window=50, min_sample=10)


def test_below_the_minimum_sample_nothing_is_judged():
    state = DlqLimitState(DlqLimit(max_bad_share=0.5, window=100, min_sample=10))
    assert state.judge([True] * 9) is None
    breach = state.judge([True] * 10)
    assert breach is not None and (breach.bad, breach.sample) == (10, 10)


def test_the_window_counts_recorded_batches_only():
    state = DlqLimitState(DlqLimit(max_bad_share=0.5, window=10, min_sample=4))
    state.judge([True] * 4)  # judged, not recorded (say the batch was rolled back)
    assert state.judge([False] * 4) is None
    state.record([False] * 6)
    assert state.judge([True] * 4) is None  # 4 of 10
    state.record([True] * 4)
    breach = state.judge([True] * 2)  # the window slides: 6 of the last 10
    assert breach is not None and (breach.bad, breach.sample) == (6, 10)


def test_a_batch_larger_than_the_window_is_judged_whole():
    state = DlqLimitState(DlqLimit(max_bad_share=0.5, window=4, min_sample=2))
    state.record([False] * 4)
    breach = state.judge([True] * 6 + [False] * 4)
    assert breach is not None and (breach.bad, breach.sample) == (6, 10)


def test_consecutive_dead_letters_across_batches():
    state = DlqLimitState(DlqLimit(max_bad_share=1.0, window=100, min_sample=1, max_consecutive=3))
    state.record([False, True, True])
    assert state.judge([True]) is None  # three in a row
    breach = state.judge([True, True])
    assert breach is not None and breach.consecutive and breach.bad == 4
    state.record([True, False])  # a good message ends the run
    assert state.judge([True, True, True]) is None


def test_without_a_consecutive_limit_runs_do_not_matter():
    state = DlqLimitState(DlqLimit(max_bad_share=1.0, window=10, min_sample=1))
    assert state.judge([True] * 50) is None


@given(st.lists(st.lists(st.booleans(), max_size=30), max_size=20), st.lists(st.booleans(), min_size=1, max_size=30),
       st.integers(1, 40), st.integers(1, 20), st.floats(0, 1))
def test_judge_is_the_share_of_the_last_window(history, batch, window, min_sample, share):
    state = DlqLimitState(DlqLimit(max_bad_share=share, window=window, min_sample=min_sample))
    for flags in history:
        state.record(flags)
    everything = [f for flags in history for f in flags]
    seen = everything[-max(0, window - len(batch)):] if window > len(batch) else []
    sample = seen + batch
    expected_over = len(sample) >= min_sample and sum(sample) / len(sample) > share
    breach = state.judge(batch)
    assert (breach is not None) == expected_over
    if breach:
        assert (breach.bad, breach.sample) == (sum(sample), len(sample))


def test_the_error_names_group_share_and_reasons():
    state = DlqLimitState(DlqLimit(max_bad_share=0.5, window=10, min_sample=2))
    batch = [msg(0), msg(1), msg(2)]
    dead = [DeadLetter(batch[0], "undecodable"), DeadLetter(batch[1], "undecodable"), DeadLetter(batch[2], "late")]
    breach = state.judge(dead_flags(batch, dead))
    err = state.error(breach, "billing-usage", dead)
    assert isinstance(err, TooManyBadMessages)
    assert err.reasons == {"undecodable": 2, "late": 1} and err.group == "billing-usage"
    assert "3 of the last 3 messages were dead-lettered" in str(err)


def test_dead_flags_follow_the_batch_order_and_refuse_strangers():
    batch = [msg(0), msg(1), msg(0, partition=1)]
    assert dead_flags(batch, [DeadLetter(batch[2], "x")]) == [False, False, True]
    with pytest.raises(ValueError, match="not in the batch"):
        dead_flags(batch, [DeadLetter(msg(7), "x")])

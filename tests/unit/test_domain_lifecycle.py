"""billing.domain.lifecycle: the state machine, checked over every (state, action) pair."""

from __future__ import annotations

import itertools
import pickle

import pytest

from billing.domain.errors import DomainError, TransitionRefused
from billing.domain.lifecycle import (
    TRANSITIONS,
    Action,
    SubscriptionStatus,
    allowed_actions,
    is_final,
    transition,
)

S, A = SubscriptionStatus, Action

# The whole table from DESIGN.md: (state, action) -> new state. Anything missing is refused.
EXPECTED = {
    (S.PENDING, A.ACTIVATE): S.ACTIVE,
    (S.PENDING, A.START_TRIAL): S.TRIALING,
    (S.TRIALING, A.END_TRIAL): S.ACTIVE,
    (S.TRIALING, A.ACTIVATE): S.ACTIVE,
    (S.TRIALING, A.CANCEL): S.CANCELED,
    (S.ACTIVE, A.PAUSE): S.PAUSED,
    (S.ACTIVE, A.CANCEL): S.CANCELED,
    (S.PAUSED, A.RESUME): S.ACTIVE,
    (S.PAUSED, A.CANCEL): S.CANCELED,
}

ALL_PAIRS = list(itertools.product(SubscriptionStatus, Action))


def test_enum_values():
    assert [s.value for s in S] == ["pending", "trialing", "active", "paused", "canceled"]
    assert [a.value for a in A] == ["activate", "start_trial", "end_trial", "pause", "resume", "cancel"]


def test_transition_table_is_exactly_the_design():
    assert dict(TRANSITIONS) == EXPECTED
    with pytest.raises(TypeError):
        TRANSITIONS[(S.CANCELED, A.RESUME)] = S.ACTIVE  # read-only


@pytest.mark.parametrize("status, action", ALL_PAIRS, ids=[f"{s}-{a}" for s, a in ALL_PAIRS])
def test_every_pair(status, action):
    if (status, action) in EXPECTED:
        assert transition(status, action) is EXPECTED[(status, action)]
        assert transition(status.value, action.value) is EXPECTED[(status, action)]
        assert action in allowed_actions(status)
    else:
        with pytest.raises(TransitionRefused) as e:
            transition(status, action)
        err = e.value
        assert isinstance(err, DomainError)
        assert err.current_state is status and err.action is action
        assert f"state '{status.value}'" in str(err)
        assert action not in allowed_actions(status)


@pytest.mark.parametrize(
    "status, action, message",
    [
        (S.CANCELED, A.PAUSE, "cannot pause a subscription in state 'canceled'"),
        (S.CANCELED, A.RESUME, "cannot resume a subscription in state 'canceled'"),
        (S.ACTIVE, A.ACTIVATE, "cannot activate a subscription in state 'active'"),
        (S.ACTIVE, A.START_TRIAL, "cannot start a trial for a subscription in state 'active'"),
        (S.PENDING, A.END_TRIAL, "cannot end the trial of a subscription in state 'pending'"),
        (S.PENDING, A.CANCEL, "cannot cancel a subscription in state 'pending'"),
        (S.PAUSED, A.PAUSE, "cannot pause a subscription in state 'paused'"),
    ],
)
def test_refusal_messages(status, action, message):
    with pytest.raises(TransitionRefused) as e:
        transition(status, action)
    assert str(e.value) == message
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == message and again.current_state is status


@pytest.mark.parametrize(
    "status, actions",
    [
        (S.PENDING, (A.ACTIVATE, A.START_TRIAL)),
        (S.TRIALING, (A.ACTIVATE, A.END_TRIAL, A.CANCEL)),
        (S.ACTIVE, (A.PAUSE, A.CANCEL)),
        (S.PAUSED, (A.RESUME, A.CANCEL)),
        (S.CANCELED, ()),
    ],
)
def test_allowed_actions(status, actions):
    assert allowed_actions(status) == actions
    assert allowed_actions(status.value) == actions


def test_canceled_is_final_and_the_only_final_state():
    assert [s for s in S if is_final(s)] == [S.CANCELED]
    assert all(allowed_actions(s) != () for s in S if s is not S.CANCELED)


def test_every_state_is_reachable_from_pending():
    seen, todo = {S.PENDING}, [S.PENDING]
    while todo:
        s = todo.pop()
        for a in allowed_actions(s):
            nxt = transition(s, a)
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S)


@pytest.mark.parametrize("status, action", [("archived", "pause"), ("active", "suspend")])
def test_unknown_values_are_value_errors(status, action):
    with pytest.raises(ValueError):
        transition(status, action)

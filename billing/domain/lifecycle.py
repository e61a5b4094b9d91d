"""The subscription lifecycle state machine (DESIGN.md, Domain).

::

    pending   --activate-->    active
    pending   --start_trial--> trialing
    trialing  --end_trial-->   active
    trialing  --activate-->    active      (end the trial early)
    trialing  --cancel-->      canceled
    active    --pause-->       paused
    active    --cancel-->      canceled
    paused    --resume-->      active
    paused    --cancel-->      canceled
    canceled  (final: no action is allowed)

Every other (state, action) pair is refused with ``TransitionRefused`` (gRPC
FAILED_PRECONDITION) and changes nothing. Repeating an action (pausing a paused
subscription) is a refusal too; replays are made harmless by idempotency keys,
not by the state machine.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Mapping

from billing.domain.errors import TransitionRefused

__all__ = [
    "SubscriptionStatus",
    "Action",
    "TRANSITIONS",
    "FINAL_STATES",
    "transition",
    "allowed_actions",
    "is_final",
]


class SubscriptionStatus(StrEnum):
    PENDING = "pending"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELED = "canceled"


class Action(StrEnum):
    ACTIVATE = "activate"
    START_TRIAL = "start_trial"
    END_TRIAL = "end_trial"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


_S = SubscriptionStatus
_A = Action

TRANSITIONS: Mapping[tuple[SubscriptionStatus, Action], SubscriptionStatus] = MappingProxyType(
    {
        (_S.PENDING, _A.ACTIVATE): _S.ACTIVE,
        (_S.PENDING, _A.START_TRIAL): _S.TRIALING,
        (_S.TRIALING, _A.END_TRIAL): _S.ACTIVE,
        (_S.TRIALING, _A.ACTIVATE): _S.ACTIVE,
        (_S.TRIALING, _A.CANCEL): _S.CANCELED,
        (_S.ACTIVE, _A.PAUSE): _S.PAUSED,
        (_S.ACTIVE, _A.CANCEL): _S.CANCELED,
        (_S.PAUSED, _A.RESUME): _S.ACTIVE,
        (_S.PAUSED, _A.CANCEL): _S.CANCELED,
    }
)

FINAL_STATES: frozenset[SubscriptionStatus] = frozenset({_S.CANCELED})


def transition(status: SubscriptionStatus | str, action: Action | str) -> SubscriptionStatus:
    """The state after ``action``; ``TransitionRefused`` if it is not allowed.

    Plain strings equal to the enum values are accepted; unknown values raise
    ``ValueError``.
    """
    s = SubscriptionStatus(status)
    a = Action(action)
    try:
        return TRANSITIONS[(s, a)]
    except KeyError:
        raise TransitionRefused(s, a) from None


def allowed_actions(status: SubscriptionStatus | str) -> tuple[Action, ...]:
    """Actions allowed from ``status``, in ``Action`` declaration order (empty if final)."""
    s = SubscriptionStatus(status)
    return tuple(a for a in Action if (s, a) in TRANSITIONS)


def is_final(status: SubscriptionStatus | str) -> bool:
    return SubscriptionStatus(status) in FINAL_STATES

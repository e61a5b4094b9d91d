"""Errors raised by the pure domain core.

The service layer maps them onto transport errors: ``ValidationError`` becomes
gRPC ``INVALID_ARGUMENT`` (or a dead-lettered Kafka command) and
``TransitionRefused`` becomes ``FAILED_PRECONDITION``.
"""

from __future__ import annotations

__all__ = ["DomainError", "ValidationError", "TransitionRefused", "PreconditionFailed"]


class DomainError(Exception):
    """Base class of every error the domain core raises on purpose."""


class ValidationError(DomainError):
    """An input value breaks a rule.

    ``field`` is a path to the offending value, such as
    ``"usage_charges[0].tiers[1].up_to"``; ``message`` says what is wrong with it
    in words fit for an API client. ``str(err)`` is ``"<field>: <message>"``.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keep the two-argument constructor picklable
        return (type(self), (self.field, self.message))

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


_ACTION_PHRASES = {
    "activate": "activate",
    "start_trial": "start a trial for",
    "end_trial": "end the trial of",
    "pause": "pause",
    "resume": "resume",
    "cancel": "cancel",
}


def _value(x: object) -> str:
    # StrEnum members stringify to their value; plain strings pass through.
    return str(getattr(x, "value", x))


class TransitionRefused(DomainError):
    """A lifecycle action is not allowed from the subscription's current state.

    ``current_state`` and ``action`` are the values that were refused (normally
    ``SubscriptionStatus`` / ``Action`` members). The message reads, e.g.,
    ``"cannot pause a subscription in state 'canceled'"``.
    """

    def __init__(self, current_state: object, action: object, message: str | None = None) -> None:
        self.current_state = current_state
        self.action = action
        if message is None:
            verb = _ACTION_PHRASES.get(_value(action), _value(action))
            message = f"cannot {verb} a subscription in state '{_value(current_state)}'"
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[object, object, str]]:
        return (type(self), (self.current_state, self.action, self.message))

    def __str__(self) -> str:
        return self.message


class PreconditionFailed(DomainError):
    """The request is well formed but the current state does not allow it (e.g. a plan
    change to a plan of another currency, or to an archived plan)."""

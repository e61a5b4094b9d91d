"""Errors raised by the pure domain core.

The service layer maps them onto transport errors: ``ValidationError`` becomes
gRPC ``INVALID_ARGUMENT`` (or a dead-lettered Kafka command) and
``TransitionRefused`` becomes ``FAILED_PRECONDITION``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Callable, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["DomainError", "ValidationError", "Violations", "TransitionRefused", "PreconditionFailed", "text_field"]


class DomainError(Exception):
    """Base class of every error the domain core raises on purpose.

    ``reason`` is a stable UPPER_SNAKE_CASE name of the cause, sent to API clients as
    ``google.rpc.ErrorInfo.reason``; empty means the default of the error's kind."""

    reason: str = ""


class ValidationError(DomainError):
    """An input value breaks a rule.

    ``field`` is a path to the offending value, such as
    ``"usage_charges[0].tiers[1].up_to"``; ``message`` says what is wrong with it
    in words fit for an API client. ``str(err)`` is ``"<field>: <message>"``.
    """

    def __init__(self, field: str, message: str, *, more: tuple[tuple[str, str], ...] = ()) -> None:
        self.field = field
        self.message = message
        # Every violation of the request, this one first (``ValidationError.of``).
        self.violations: tuple[tuple[str, str], ...] = ((field, message), *more)
        super().__init__(str(self))

    @classmethod
    def of(cls, violations: list[tuple[str, str]]) -> "ValidationError":
        """One error carrying several violations (at least one)."""
        (field, message), *more = violations
        return cls(field, message, more=tuple(more))

    def __reduce__(self) -> tuple[Callable[..., "ValidationError"], tuple[type, tuple[tuple[str, str], ...]]]:  # keep the constructor picklable, the other violations too
        return (_rebuild, (type(self), self.violations))

    def __str__(self) -> str:
        return "; ".join(f"{f}: {m}" for f, m in self.violations)


def _rebuild(cls: type, violations: tuple[tuple[str, str], ...]) -> "ValidationError":
    err: ValidationError = ValidationError.__new__(cls)
    ValidationError.__init__(err, violations[0][0], violations[0][1], more=tuple(violations[1:]))
    return err


class Violations:
    """Collects the ValidationErrors of several checks, so a request is refused once with
    all of them: ``v.check(fn, *args)`` returns fn's value, or None when it refused."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def check(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
        try:
            return fn(*args, **kwargs)
        except ValidationError as exc:
            self.items.extend(exc.violations)
            return None

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationError.of(self.items)


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

    def __init__(self, message: str, reason: str = "FAILED_PRECONDITION") -> None:
        super().__init__(message)
        self.reason = reason


def text_field(value: object, field: str) -> str:
    """A raw text field of a request: ``None`` counts as not given (``""``); anything but a
    string is a ValidationError naming ``field``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    return value


_E = TypeVar("_E", bound=StrEnum)


def enum_field(enum_cls: type[_E], value: object, field: str) -> _E:
    """A required text field holding one of `enum_cls`'s values; the error lists them."""
    text = text_field(value, field)
    if text == "":
        raise ValidationError(field, "is required")
    try:
        return enum_cls(text)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)
        raise ValidationError(field, f"must be one of {allowed}, got {text!r}") from None

"""Errors a use case can refuse with; the API maps each to one gRPC status."""
from __future__ import annotations

from billing.domain.errors import DomainError, TransitionRefused, ValidationError, Violations

__all__ = [
    "AlreadyExists", "DomainError", "FailedPrecondition", "IdempotencyConflict", "NotFound",
    "TransitionRefused", "ValidationError", "Violations",
]


class NotFound(DomainError):
    def __init__(self, kind: str, ident: str):
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident
        self.reason = kind.upper().replace(" ", "_") + "_NOT_FOUND"


class AlreadyExists(DomainError):
    def __init__(self, message: str, reason: str = "ALREADY_EXISTS"):
        super().__init__(message)
        self.reason = reason


class FailedPrecondition(DomainError):
    def __init__(self, message: str, reason: str = "FAILED_PRECONDITION"):
        super().__init__(message)
        self.reason = reason


class IdempotencyConflict(ValidationError):
    """The same request_id was used before for a different request."""

    reason = "REQUEST_ID_REUSED"

    def __init__(self, key: str, operation: str):
        super().__init__("request_id", f"{key!r} was already used for a different {operation} request")

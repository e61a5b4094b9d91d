"""One gRPC status per kind of refusal; an unexpected error is INTERNAL and logged."""
from __future__ import annotations

import functools
import logging

import grpc

from billing.api.interceptors import current_caller
from billing.api.unavailable import UNAVAILABLE_ERRORS, UNAVAILABLE_MESSAGE
from billing.services.context import Caller
from billing.services.errors import (
    AlreadyExists, DomainError, FailedPrecondition, NotFound, TransitionRefused, ValidationError,
)

log = logging.getLogger(__name__)

_STATUS = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (TransitionRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: DomainError) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def rpc(method):
    """Run a servicer method with the authenticated caller; turn refusals into statuses."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        caller: Caller | None = current_caller.get()
        if caller is None:  # the auth interceptor always sets it; never serve without a tenant
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not authenticated")
        try:
            return await method(self, request, caller)
        except DomainError as exc:
            await context.abort(status_for(exc), str(exc))
        except grpc.aio.AbortError:
            raise
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable in %s: %s: %s", method.__name__, type(exc).__name__, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")

    return wrapper

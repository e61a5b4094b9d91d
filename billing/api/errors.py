"""One gRPC status per kind of refusal; an unexpected error is INTERNAL and logged."""
from __future__ import annotations

import functools
import logging

import asyncpg
import grpc

from billing.api import status
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


def _reason(exc: DomainError, code: grpc.StatusCode) -> str:
    if exc.reason:
        return exc.reason
    if isinstance(exc, ValidationError):
        return "PAGE_TOKEN_INVALID" if exc.field == "page_token" else "INVALID_FIELD"
    if isinstance(exc, TransitionRefused):
        return "TRANSITION_REFUSED"
    return code.name


async def refuse(context: grpc.aio.ServicerContext, exc: DomainError) -> None:
    """End the call with the status of a refusal and its google.rpc details."""
    code = status_for(exc)
    metadata: dict[str, str] = {}
    violations: tuple[tuple[str, str], ...] = ()
    resource = None
    if isinstance(exc, ValidationError):
        violations = exc.violations
        metadata["field"] = exc.field
    elif isinstance(exc, NotFound):
        resource = (exc.kind, exc.ident)
    await status.abort(context, code, str(exc), reason=_reason(exc, code), metadata=metadata,
                       violations=violations, resource=resource)


def rpc(method):
    """Run a servicer method with the authenticated caller; turn refusals into statuses."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        caller: Caller | None = current_caller.get()
        if caller is None:  # the auth interceptor always sets it; never serve without a tenant
            await status.abort(context, grpc.StatusCode.UNAUTHENTICATED, "not authenticated",
                               reason="API_KEY_MISSING")
        try:
            return await method(self, request, caller)
        except DomainError as exc:
            await refuse(context, exc)
        except grpc.aio.AbortError:
            raise
        except asyncpg.InvalidAuthorizationSpecificationError:  # the key, revoked since it was cached
            log.info("unauthenticated call refused", extra={"method": method.__name__,
                                                            "reason": "API key revoked during the call's cache life"})
            await status.abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key",
                               reason="API_KEY_INVALID")
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable in %s: %s: %s", method.__name__, type(exc).__name__, exc)
            await status.abort(context, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE,
                               reason="DATABASE_UNAVAILABLE")
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await status.abort(context, grpc.StatusCode.INTERNAL, "internal error; it has been logged",
                               reason="INTERNAL")

    return wrapper

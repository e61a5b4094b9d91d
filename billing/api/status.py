"""Refusals as `google.rpc.Status` with details (AIP-193), the one way the API ends a call
with an error.

Every error carries an `ErrorInfo` (a stable `reason`, the `DOMAIN` below, and metadata
such as the field), an INVALID_ARGUMENT a `BadRequest` listing every field violation of
the request, a NOT_FOUND a `ResourceInfo`. The status travels in the standard
`grpc-status-details-bin` trailer, so any gRPC client's rich-error helper reads it
(Python: `grpc_status.rpc_status`); code and message stay the plain gRPC status, so clients
that ignore details lose nothing.
"""
from __future__ import annotations

from typing import NoReturn, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# ErrorInfo.domain of every error this service returns (docs/api.md).
DOMAIN = "billing.v1"


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(code: grpc.StatusCode, message: str, *, reason: str, metadata: dict[str, str] | None = None,
                violations: Sequence[tuple[str, str]] = (),
                resource: tuple[str, str] | None = None) -> status_pb2.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))]
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations])))
    if resource is not None:
        kind, name = resource
        details.append(_pack(error_details_pb2.ResourceInfo(resource_type=kind, resource_name=name,
                                                            description=message)))
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, *, reason: str,
                metadata: dict[str, str] | None = None, violations: Sequence[tuple[str, str]] = (),
                resource: tuple[str, str] | None = None) -> NoReturn:
    status = rich_status(code, message, reason=reason, metadata=metadata, violations=violations, resource=resource)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # it always raises

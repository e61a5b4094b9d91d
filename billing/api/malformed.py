"""Requests whose bytes are no valid message (corrupt wire format, invalid UTF-8 in a string
field) are refused with INVALID_ARGUMENT.

grpc answers a request that its deserializer cannot parse with UNKNOWN ("Unexpected
DecodeError"), which tells the client nothing and looks like a server fault. This
interceptor, the innermost, makes the deserializer return a marker instead, and answers a
marked call INVALID_ARGUMENT after the outer interceptors (authentication first) ran.
"""
from __future__ import annotations

from typing import Awaitable, Callable

import grpc

from billing.api import status


class MalformedRequest:
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _lenient(deserializer):
    if deserializer is None:
        return None

    def parse(raw: bytes):
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - DecodeError and anything else the parser raises
            return MalformedRequest(f"{type(exc).__name__}: {str(exc)[:200]}")

    return parse


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior: Callable[..., Awaitable] = handler.unary_unary

        async def call(request, context: grpc.aio.ServicerContext):
            if isinstance(request, MalformedRequest):
                message = f"request: not a valid protobuf message ({request.reason})"
                await status.abort(context, grpc.StatusCode.INVALID_ARGUMENT, message, reason="MALFORMED_REQUEST",
                                   violations=[("request", message)])
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

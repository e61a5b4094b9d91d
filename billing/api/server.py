"""The gRPC server: BillingService, the standard health service and reflection."""
from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from billing.api.interceptors import CallInterceptor
from billing.api.overload import CallLimit
from billing.api.servicer import BillingServicer
from billing.api.tls import ServerTls
from billing.api import usage_batch_wire
from billing.services.api_keys import KeyCache
from billing.services.paging import PageTokens
from billing.services.uow import Database
from billing.services.usage import Usage
from billing.v1 import billing_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name
SERVICE_METHODS = tuple(m.name for m in billing_pb2.DESCRIPTOR.services_by_name["BillingService"].methods)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class GrpcServer:
    def __init__(self, db: Database, host: str, port: int, *, usage: Usage, run_shards: int,
                 tls: ServerTls | None = None, max_concurrent_calls: int = 0, page_tokens: PageTokens | None = None,
                 api_key_cache_ttl_s: float = 0.0, reuse_port: bool = False):
        self.tls = tls or ServerTls()
        credentials = self.tls.credentials()  # before binding: a bad setting fails the start
        self.limiter = CallLimit(max_concurrent_calls)
        self.keys = KeyCache(db, api_key_cache_ttl_s)
        self.server = grpc.aio.server(
            # One interceptor: metrics (outermost: they count the calls refused by the bound
            # too), the bound, the span (it covers authentication, and so does the latency),
            # authentication, malformed requests (billing/api/interceptors.py).
            interceptors=[CallInterceptor(self.keys, self.limiter, SERVICE_METHODS)],
            # so_reuseport: the processes of BILLING_GRPC_PROCESSES share the port (the kernel
            # spreads connections); off otherwise, so a port already taken fails the start.
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", int(reuse_port))],
        )
        page_tokens = page_tokens or PageTokens()
        if not page_tokens.shared:
            log.info("BILLING_PAGE_TOKEN_SECRET is not set: page tokens are signed with a key of this process "
                     "alone, valid only on this replica until it restarts (docs/api.md#page-tokens)")
        usage_batch_wire.register(BillingServicer(db, usage, run_shards, page_tokens), self.server, SERVICE_NAME)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        if credentials is None:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        self.address = f"{host}:{self.port}"

    async def start(self) -> None:
        self.keys.start()
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """NOT_SERVING for good: later set_serving calls (readiness changes) are ignored."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.server.stop(grace_s)
        await self.keys.stop()

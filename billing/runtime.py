"""`billing serve`: every role of the service in one process, or the roles asked for.

Roles today: `api` (the gRPC facade). The consumers and relays of later issues join as
roles of their own, so each can also run alone and scale out as replicas. Every process
serves the HTTP side port (health, readiness, metrics) whatever its roles.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from billing.api.server import GrpcServer
from billing.config import Settings
from billing.ops import http
from billing.ops.readiness import Readiness
from billing.store.db import Database

log = logging.getLogger(__name__)

ALL_ROLES = ("api",)


@dataclass
class Service:
    settings: Settings
    roles: tuple[str, ...] = ALL_ROLES
    db: Database | None = None
    grpc: GrpcServer | None = None
    readiness: Readiness | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _http_runner: object | None = None

    async def start(self) -> None:
        s = self.settings
        unknown = set(self.roles) - set(ALL_ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; known: {', '.join(ALL_ROLES)}")
        self.db = await Database.connect(s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max)
        self.readiness = Readiness(self.db, s.kafka_bootstrap_servers, s.migrations_dir)
        if "api" in self.roles:
            self.grpc = GrpcServer(self.db, s.grpc_host, s.grpc_port)
            await self.grpc.start()
            await self.grpc.set_serving(False)
            self.readiness.listeners.append(
                lambda ready: asyncio.get_running_loop().create_task(self.grpc.set_serving(ready))
            )
        await self.readiness.check_once()
        self._tasks.append(asyncio.create_task(self.readiness.run(), name="readiness"))
        self._http_runner = await http.start(self.readiness, s.http_host, s.http_port)
        log.info("service started", extra={
            "roles": list(self.roles), "grpc": self.grpc.address if self.grpc else None,
            "http": f"{s.http_host}:{s.http_port}", "ready": self.readiness.ready,
        })

    async def stop(self) -> None:
        """Graceful: stop taking calls, let in-flight ones finish, then close the pool."""
        if self.grpc:
            await self.grpc.set_serving(False)
            await self.grpc.stop(grace_s=5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http_runner:
            await self._http_runner.cleanup()
        if self.db:
            await self.db.close()
        log.info("service stopped")


async def serve(settings: Settings, roles: tuple[str, ...] = ALL_ROLES) -> None:
    service = Service(settings, roles)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()

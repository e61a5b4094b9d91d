"""The relay's leader lease: one active relay per group, by a PostgreSQL advisory lock.

Every relay holds a dedicated session (`listen_dsn`, the worker role) and tries
`pg_try_advisory_lock(<hash of the group>)` on it; the one that gets it leads, the others
try again every `standby_retry_s`. The leader runs its relay SQL and its LISTEN on that
same session, so a leader that lost its session cannot go on marking rows. A killed
leader's session ends and frees the lock; a standby takes over within `standby_retry_s`
(plus, for a silent network loss, the time the server needs to notice: TCP keepalives).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from billing.store import outbox_relay as sql
from billing.store.db import init_connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    dsn: str
    group: str = "default"
    standby_retry_s: float = 3.0
    retry_backoff_s: float = 1.0  # reconnecting after a failure, doubling
    max_retry_backoff_s: float = 30.0

    def backoff(self, failures: int) -> float:
        return min(self.max_retry_backoff_s, self.retry_backoff_s * 2 ** min(failures - 1, 10))


class LeaderLease:
    """Campaigns until `stopping` is set and runs `lead(session)` whenever it holds the lock.
    `sleep(s)` returns early on stop; `on_session_lost` wakes the leader's loop."""

    def __init__(self, settings: LeaseSettings, stopping: threading.Event,
                 sleep: Callable[[float], Awaitable[None]], on_session_lost: Callable[[], None]):
        self._s = settings
        self._key = sql.lock_key(settings.group)
        self._stopping = stopping
        self._sleep = sleep
        self._on_session_lost = on_session_lost

    async def run(self, lead: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        failures = 0
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            locked = False
            try:
                conn = await self._connect()
                locked = await self._campaign(conn)
                failures = 0  # the session answered
                if locked and not self._stopping.is_set():
                    await lead(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = self._s.backoff(failures)
                log.exception("outbox relay: session lost or failed; retrying", extra={
                    "group": self._s.group, "retry_in_s": delay})
                await self._close(conn, locked)
                conn = None
                await self._sleep(delay)
            finally:
                await self._close(conn, locked)

    async def _connect(self) -> asyncpg.Connection:
        # The session runs only the relay's functions: with the relay's planner settings
        # (billing/store/outbox_relay.py says why).
        conn = await asyncpg.connect(self._s.dsn, command_timeout=30, server_settings={
            "application_name": f"billing-outbox-relay:{self._s.group}"[:63], **sql.PLANNER_SETTINGS})
        await init_connection(conn)
        conn.add_termination_listener(lambda _c: self._on_session_lost())
        return conn

    async def _campaign(self, conn: asyncpg.Connection) -> bool:
        """True once this session holds the lock; False when stopped first."""
        while not self._stopping.is_set():
            if await sql.try_lock(conn, self._key):
                return True
            await self._sleep(self._s.standby_retry_s)
        return False

    async def _close(self, conn: asyncpg.Connection | None, locked: bool) -> None:
        if conn is None or conn.is_closed():
            return
        try:
            if locked:
                await asyncio.wait_for(sql.unlock(conn, self._key), 5)
            await asyncio.wait_for(conn.close(), 5)
        except Exception:
            conn.terminate()

"""API key -> tenant, cached in the process so a call does not spend a pooled connection and
two round trips on authentication (docs/api.md, "Authentication").

The cache is trusted only while this process LISTENs for key changes (migration 031 notifies
at the commit of any revocation, rotation with --revoke-old, or deletion): each notification
clears it, so a revoked key is refused from the next call this process answers once the
notification is in, normally within milliseconds. Whenever the listening connection is down,
nothing is cached and every call asks the database, as without a cache. `ttl_s` bounds an
entry's life besides (a notification lost without the connection noticing).

Calls that read or write tenant data are refused at once in any case: the statement that
opens their transaction checks the key live (`store/db.py`, `api_keys_live`).
"""
from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from billing.services.tenants import KEY_PREFIX, KeyIdentity, hash_key
from billing.services.uow import Database
from billing.store import tenants as tenants_store

log = logging.getLogger(__name__)

MAX_KEYS = 10_000  # entries kept; beyond, the oldest goes (each is about 200 bytes)
RECONNECT_S = 1.0


class KeyCache:
    def __init__(self, db: Database, ttl_s: float, max_keys: int = MAX_KEYS):
        self._db = db
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._entries: dict[bytes, tuple[KeyIdentity, float]] = {}
        self._generation = 0  # bumped by every clear: a lookup begun before one is not cached
        self._listening = False
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task | None = None
        self._lost = asyncio.Event()
        self.hits = 0
        self.lookups = 0
        self.notifications = 0

    @property
    def active(self) -> bool:
        return self._listening and self.ttl_s > 0

    async def identify(self, api_key: str) -> KeyIdentity | None:
        """The tenant and id of a live key, or None (unknown, revoked, or not a key at all)."""
        if not api_key.startswith(KEY_PREFIX) or len(api_key) > 200:
            return None
        key_hash = hash_key(api_key)
        if self.active:
            entry = self._entries.get(key_hash)
            if entry is not None and entry[1] > time.monotonic():
                self.hits += 1
                return entry[0]
        generation = self._generation
        self.lookups += 1
        async with self._db.pool.acquire() as conn:
            found = await tenants_store.key_for_hash(conn, key_hash)
        if found is None:
            return None
        identity = KeyIdentity(found[0], found[1], key_hash)
        if self.active and generation == self._generation:
            self._entries.pop(key_hash, None)
            self._entries[key_hash] = (identity, time.monotonic() + self.ttl_s)
            if len(self._entries) > self.max_keys:
                del self._entries[next(iter(self._entries))]
        return identity

    def forget(self, key_hash: bytes | None = None) -> None:
        """Forget one key (refused by the database meanwhile), or every key."""
        self._generation += 1
        if key_hash is None:
            self._entries.clear()
        else:
            self._entries.pop(key_hash, None)

    def start(self) -> None:
        if self.ttl_s > 0 and self._db.url and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="api-key-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._close()

    async def _listen(self) -> None:
        assert self._db.url is not None
        while True:
            self._lost.clear()
            try:
                self._conn = await tenants_store.listen_key_changes(self._db.url, self._on_change, self._on_lost)
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
                log.warning("API key cache off: cannot listen for key changes: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(RECONNECT_S)
                continue
            self.forget()  # a revocation may have come before the LISTEN
            self._listening = True
            await self._lost.wait()
            log.warning("API key cache off until the key-change listener reconnects")
            await self._close()
            await asyncio.sleep(RECONNECT_S)

    def _on_change(self) -> None:
        self.notifications += 1
        self.forget()

    def _on_lost(self) -> None:
        self._listening = False
        self.forget()
        self._lost.set()

    async def _close(self) -> None:
        self._listening = False
        self.forget()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=5)

"""Tenants and their API keys. Keys are shown once, stored only as a SHA-256 hash."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from billing.store import tenants as tenants_store
from billing.store.db import set_tenant

KEY_PREFIX = "bk_"


@dataclass(frozen=True)
class NewTenant:
    tenant_id: uuid.UUID
    name: str
    api_key: str
    api_key_id: uuid.UUID


def hash_key(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def key_prefix(api_key: str) -> str:
    """Enough to tell keys apart in logs and the audit trail; useless for authenticating."""
    return api_key[:10]


async def create_tenant(admin: asyncpg.Connection, name: str) -> NewTenant:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValueError("tenant name must be 1..200 characters")
    tenant_id = uuid.uuid4()
    async with admin.transaction():
        await tenants_store.insert_tenant(admin, tenant_id, name)
        key_id, key = await _issue_key(admin, tenant_id)
    return NewTenant(tenant_id, name, key, key_id)


async def issue_key(admin: asyncpg.Connection, tenant_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    async with admin.transaction():
        return await _issue_key(admin, tenant_id)


async def _issue_key(admin: asyncpg.Connection, tenant_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    await tenants_store.insert_key(admin, tenant_id, key_id, hash_key(key), key_prefix(key))
    return key_id, key


async def revoke_key(admin: asyncpg.Connection, api_key_id: uuid.UUID) -> bool:
    return await tenants_store.revoke_key(admin, api_key_id)


async def authenticate(conn: asyncpg.Connection, api_key: str) -> uuid.UUID | None:
    """The tenant of a live key, or None. Revocation takes effect on the next call."""
    if not api_key.startswith(KEY_PREFIX) or len(api_key) > 200:
        return None
    return await tenants_store.tenant_for_key_hash(conn, hash_key(api_key))


@dataclass(frozen=True)
class KeyIdentity:
    tenant_id: uuid.UUID
    api_key_id: uuid.UUID

    @property
    def actor(self) -> str:
        """The audit trail's actor: the key's id, which names the key without any of its secret."""
        return f"api:{self.api_key_id}"


class Authenticator:
    """API key -> tenant and key id. Whether the key is live is asked on every call, so a
    revocation takes effect at once; the key's id never changes for a given key, so it is
    remembered (by the key's hash), and a known key costs one query as before."""

    def __init__(self, max_remembered: int = 10_000):
        self._ids: dict[bytes, uuid.UUID] = {}
        self._max = max_remembered

    async def __call__(self, conn: asyncpg.Connection, api_key: str) -> KeyIdentity | None:
        if not api_key.startswith(KEY_PREFIX) or len(api_key) > 200:
            return None
        key_hash = hash_key(api_key)
        tenant_id = await tenants_store.tenant_for_key_hash(conn, key_hash)
        if tenant_id is None:
            return None
        key_id = self._ids.get(key_hash)
        if key_id is None:
            key_id = await tenants_store.key_id_for_hash(conn, tenant_id, key_hash)
            if key_id is None:  # revoked between the two queries
                return None
            if len(self._ids) >= self._max:
                self._ids.clear()
            self._ids[key_hash] = key_id
        return KeyIdentity(tenant_id, key_id)


async def exists(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant exists, asked inside the caller's transaction (in a savepoint that
    sets the tenant, which row-level security needs to show its row)."""
    async with conn.transaction():
        await set_tenant(conn, tenant_id)
        return await tenants_store.exists(conn, tenant_id)

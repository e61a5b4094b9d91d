"""Tenants and their API keys. Keys are shown once, stored only as a SHA-256 hash."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

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


@dataclass(frozen=True)
class RotatedKey:
    api_key_id: uuid.UUID
    api_key: str
    revoked: list[uuid.UUID]


class UnknownTenant(LookupError):
    pass


async def rotate_key(admin: asyncpg.Connection, tenant_id: uuid.UUID, revoke_others: bool) -> RotatedKey:
    """A new key for the tenant; with `revoke_others`, every other live key is revoked in the
    same transaction (from the next call on), else they stay valid until revoked one by one:
    a client can move to the new key first."""
    async with admin.transaction():
        if not await tenants_store.exists_any(admin, tenant_id):
            raise UnknownTenant(f"no tenant {tenant_id}")
        key_id, key = await _issue_key(admin, tenant_id)
        revoked = await tenants_store.revoke_keys_except(admin, tenant_id, key_id) if revoke_others else []
    return RotatedKey(key_id, key, revoked)


async def list_tenants(admin: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await tenants_store.list_all(admin)]


async def revoke_key(admin: asyncpg.Connection, api_key_id: uuid.UUID) -> bool:
    return await tenants_store.revoke_key(admin, api_key_id)


async def exists(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant exists, asked inside the caller's transaction (in a savepoint that
    sets the tenant, which row-level security needs to show its row)."""
    async with conn.transaction():
        await set_tenant(conn, tenant_id)
        return await tenants_store.exists(conn, tenant_id)


@dataclass(frozen=True)
class KeyIdentity:
    tenant_id: uuid.UUID
    api_key_id: uuid.UUID
    key_hash: bytes | None = None

    # Cached: an identity lives in the key cache and serves every call made with the key.
    @cached_property
    def actor(self) -> str:
        """The audit trail's actor: the key's id, which names the key without any of its secret."""
        return f"api:{self.api_key_id}"

    @cached_property
    def tenant_text(self) -> str:
        return str(self.tenant_id)

    @cached_property
    def entry_keys(self) -> tuple[bytes, ...]:
        """The keys a call made with this one has its database statements check live."""
        return (self.key_hash,) if self.key_hash else ()


async def identify(conn: asyncpg.Connection, api_key: str) -> KeyIdentity | None:
    """The tenant and id of a live key, in one query, or None. Asked on every call, so a
    revocation takes effect at once."""
    if not api_key.startswith(KEY_PREFIX) or len(api_key) > 200:
        return None
    key_hash = hash_key(api_key)
    found = await tenants_store.key_for_hash(conn, key_hash)
    return KeyIdentity(found[0], found[1], key_hash) if found else None

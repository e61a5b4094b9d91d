"""Administrative actions run as the schema owner (BILLING_ADMIN_DATABASE_URL): migrations,
tenants and their keys. `billing` (billing/cli.py) and `billing dev` (billing/devstack/cli.py)
both call these."""
from __future__ import annotations

import uuid

import asyncpg

from billing.config import Settings
from billing.services.tenants import create_tenant as _create, revoke_key as _revoke
from billing.store.migrations import migrate as _migrate


async def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; the names applied."""
    return await _migrate(settings.admin_database_url, settings.migrations_dir)


async def create_tenant(settings: Settings, name: str) -> dict:
    """A new tenant and its first API key (shown once), as JSON-ready text."""
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        tenant = await _create(conn, name)
    finally:
        await conn.close()
    return {"tenant_id": str(tenant.tenant_id), "name": tenant.name, "api_key_id": str(tenant.api_key_id),
            "api_key": tenant.api_key}


async def revoke_key(settings: Settings, key_id: str) -> bool:
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        return await _revoke(conn, uuid.UUID(key_id))
    finally:
        await conn.close()

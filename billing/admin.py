"""Administrative actions run as the schema owner (BILLING_ADMIN_DATABASE_URL): migrations,
tenants and their keys, partition maintenance. `billing` (billing/cli.py) and `billing dev` (billing/devstack/cli.py)
both call these."""
from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime, timedelta, timezone

import asyncpg

from billing.config import Settings
from billing.services import maintenance as _maintenance
from billing.services import tenants as _tenants
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


async def list_tenants(settings: Settings) -> list[dict]:
    """Every tenant, oldest first: id, name, creation time and its number of live keys."""
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        rows = await _tenants.list_tenants(conn)
    finally:
        await conn.close()
    return [{"tenant_id": str(r["id"]), "name": r["name"], "created_at": r["created_at"].isoformat(),
             "live_keys": r["live_keys"]} for r in rows]


async def rotate_key(settings: Settings, tenant_id: str, revoke_others: bool) -> dict:
    """A new key for the tenant (shown once), and the ids of the keys revoked with it."""
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        rotated = await _tenants.rotate_key(conn, uuid.UUID(tenant_id), revoke_others)
    finally:
        await conn.close()
    return {"tenant_id": tenant_id, "api_key_id": str(rotated.api_key_id), "api_key": rotated.api_key,
            "revoked": [str(k) for k in rotated.revoked]}


async def maintenance(settings: Settings, keep_detached: bool = False) -> dict:
    """Usage partitions created ahead, then the retention of BILLING_USAGE_RETENTION_MONTHS,
    BILLING_OUTBOX_RETENTION_DAYS, BILLING_AUDIT_DETACH_MONTHS and BILLING_IDEMPOTENCY_RETENTION_DAYS
    (docs/usage.md, "Partitions and retention"); what was done, as JSON-ready values."""
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        now = datetime.now(timezone.utc)
        created = await _maintenance.create_ahead(conn, now, settings.usage_partitions_ahead_months)
        policy = _maintenance.RetentionPolicy(
            months=settings.usage_retention_months, drop=not keep_detached, outbox_days=settings.outbox_retention_days,
            audit_months=settings.audit_detach_months, idempotency_days=settings.idempotency_retention_days,
            late_window=timedelta(days=settings.usage_max_age_days, seconds=settings.usage_max_future_skew_s))
        report = await _maintenance.apply_retention(conn, now, policy)
    finally:
        await conn.close()
    return {"created": created, **asdict(report)}

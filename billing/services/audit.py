"""The audit trail: one row per change, with the state before and after."""
from __future__ import annotations

import uuid

import asyncpg

from billing.services.context import Caller
from billing.store import audit as audit_store


async def record_change(conn: asyncpg.Connection, caller: Caller, *, entity_type: str, entity_id: uuid.UUID,
                        action: str, before: dict | None, after: dict | None, request_id: str | None) -> None:
    await audit_store.append(conn, caller.tenant_id, entity_type=entity_type, entity_id=entity_id, action=action,
                             actor=caller.actor, request_id=request_id, before=before, after=after)

"""Soft-deleting one of a tenant's rows by id (a discount, a threshold): the checks, the
idempotency claim, the NOT_FOUND, the audit row, in one place for every such Delete RPC.

The row is kept with ``deleted_at`` set; deleting it again changes nothing and writes no
audit row, and returns it as it is (a retry with the same request_id returns the first
answer).
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Awaitable, Callable, Protocol, TypeVar

import asyncpg

from billing.services import audit, idempotency, paging
from billing.services.context import Caller
from billing.services.errors import NotFound, Violations
from billing.store.db import Database


class _Deletable(Protocol):
    @property
    def deleted_at(self) -> datetime | None: ...

    def snapshot(self) -> dict: ...


V = TypeVar("V", bound=_Deletable)
RowById = Callable[[asyncpg.Connection, uuid.UUID, uuid.UUID], Awaitable[asyncpg.Record | None]]
DeleteById = Callable[[asyncpg.Connection, uuid.UUID, uuid.UUID], Awaitable[asyncpg.Record]]
BeforeChange = Callable[[asyncpg.Connection, uuid.UUID, asyncpg.Record], Awaitable[object]]


async def soft_delete(db: Database, caller: Caller, request_id: str, row_id: str, *, entity: str, method: str,
                      get: RowById, delete: DeleteById, view: Callable[[asyncpg.Record], V],
                      from_snapshot: Callable[[dict], V], before_change: BeforeChange | None = None) -> V:
    """Delete the row `row_id` (field ``id``) of the caller's tenant. `entity` names it in the
    NOT_FOUND and the audit row (entity type `entity`, action ``<entity>.deleted``); `method`
    is the idempotency key's method. `before_change` runs once the row is found, in the same
    transaction (a lock the row's readers also take)."""
    v = Violations()
    v.check(idempotency.check_key, request_id)
    ident = v.check(paging.parse_uuid, row_id, "id")
    v.raise_if_any()
    assert ident is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, method, {"id": str(ident)})
        if replay is not None:
            return from_snapshot(replay)
        row = await get(conn, caller.tenant_id, ident)
        if row is None:
            raise NotFound(entity, row_id)
        if before_change is not None:
            await before_change(conn, caller.tenant_id, row)
        before = view(row)
        after = before
        if before.deleted_at is None:
            after = view(await delete(conn, caller.tenant_id, ident))
            await audit.record_change(conn, caller, entity_type=entity, entity_id=ident, action=f"{entity}.deleted",
                                      before=before.snapshot(), after=after.snapshot(), request_id=request_id)
        await idempotency.remember(conn, caller, request_id, after.snapshot())
        return after

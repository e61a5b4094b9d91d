"""One subscription's rows of a kind (its discounts, its thresholds), a page at a time: the
checks, the page token bound to the method and the filters, and the NOT_FOUND of a
subscription the tenant does not have, in one place for every such List RPC. A plan's rows
(its thresholds) page the same way (`scope=PLAN`)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Awaitable, Callable, Protocol, TypeVar

import asyncpg

from billing.services import paging
from billing.services.context import Caller
from billing.services.errors import NotFound, Violations
from billing.store import plans as plans_store
from billing.store import subscriptions as subs_store
from billing.store.db import Database


class _Listed(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def created_at(self) -> datetime: ...


V = TypeVar("V", bound=_Listed)
#: What the rows belong to: (the request's field, the NOT_FOUND resource, the lookup).
Scope = tuple[str, str, Callable[[asyncpg.Connection, uuid.UUID, uuid.UUID], Awaitable[object]]]
SUBSCRIPTION: Scope = ("subscription_id", "subscription", subs_store.get)
PLAN: Scope = ("plan_id", "plan", plans_store.get)
ListPage = Callable[..., Awaitable[list[asyncpg.Record]]]


async def page_of(db: Database, caller: Caller, method: str, subscription_id: str, *, tokens: paging.PageTokens,
                  page_size: int, page_token: str, include_deleted: bool, list_page: ListPage,
                  view: Callable[[asyncpg.Record], V], scope: Scope = SUBSCRIPTION) -> tuple[list[V], str]:
    """A page of the subscription's rows (`list_page`, keyed by creation time then id) as
    views, and the next page's token ("" on the last page). `scope` PLAN: `subscription_id`
    is a plan's id, and the rows are the plan's."""
    field, resource, lookup = scope
    v = Violations()
    sub_id = v.check(paging.parse_uuid, subscription_id, field)
    limit = v.check(paging.page_size, page_size)
    v.raise_if_any()
    assert sub_id is not None and limit is not None
    filters = {field: str(sub_id), "include_deleted": include_deleted}
    after = tokens.decode(page_token, method, caller.tenant_id, filters)
    async with db.tenant_tx(caller.tenant_id) as conn:
        if await lookup(conn, caller.tenant_id, sub_id) is None:
            raise NotFound(resource, subscription_id)
        rows = await list_page(conn, caller.tenant_id, sub_id, include_deleted=include_deleted, after=after,
                               limit=limit + 1)
    found = [view(r) for r in rows[:limit]]
    token = tokens.encode(method, caller.tenant_id, filters, found[-1].created_at, found[-1].id) \
        if len(rows) > limit else ""
    return found, token

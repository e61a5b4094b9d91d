"""Rows of credit_grants and credit_entries (migration 019): prepaid credit grants and their
ledger. A grant's `remaining` is recomputed from its ledger (`refresh_remaining`) in every
transaction that adds ledger rows, so it always equals amount - sum(entries)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Sequence

import asyncpg

from billing.domain.credits import Grant

__all__ = ["NAMESPACE", "GrantRow", "Entry", "entry_id", "insert_grant", "get", "list_page", "open_grants",
           "add_entries", "refresh_remaining", "void"]

#: Namespace of ledger row ids. Never change it: a retried billing must find the same ids.
NAMESPACE = uuid.UUID("3c9a4e1d-7b52-4f0a-8e6d-2a1f5c7b9e04")

_COLUMNS = """g.id, g.customer_id, g.subscription_id, g.currency, g.amount, g.priority, g.effective_at,
              g.expires_at, g.description, g.remaining, g.voided_at, g.created_at,
              coalesce(b.applied, 0) as applied, coalesce(b.expired, 0) as expired,
              coalesce(b.voided, 0) as voided"""
_BALANCES = """left join lateral (
                   select sum(amount) filter (where kind = 'applied') as applied,
                          sum(amount) filter (where kind = 'expired') as expired,
                          sum(amount) filter (where kind = 'voided') as voided
                     from credit_entries e where e.tenant_id = g.tenant_id and e.grant_id = g.id) b on true"""


@dataclass(frozen=True)
class GrantRow:
    id: uuid.UUID
    customer_id: str
    subscription_id: uuid.UUID | None
    currency: str
    amount: Decimal
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    description: str
    remaining: Decimal
    voided_at: datetime | None
    created_at: datetime
    applied: Decimal
    expired: Decimal
    voided: Decimal


@dataclass(frozen=True)
class Entry:
    grant_id: uuid.UUID
    kind: str  # applied | expired | voided
    amount: Decimal
    subscription_id: uuid.UUID | None
    invoice_request_id: uuid.UUID | None
    run_id: uuid.UUID | None
    occurred_at: datetime


def entry_id(tenant_id: uuid.UUID, grant_id: uuid.UUID, kind: str, invoice_request_id: uuid.UUID | None) -> uuid.UUID:
    """One application per (grant, invoice request); one expiry and one void per grant."""
    return uuid.uuid5(NAMESPACE, f"{tenant_id}/{grant_id}/{kind}/{invoice_request_id or ''}")


def _row(r: asyncpg.Record) -> GrantRow:
    return GrantRow(**dict(r))


async def insert_grant(conn: asyncpg.Connection, tenant_id: uuid.UUID, grant_id: uuid.UUID, *, customer_id: str,
                       subscription_id: uuid.UUID | None, currency: str, amount: Decimal, priority: int,
                       effective_at: datetime, expires_at: datetime | None, description: str) -> bool:
    """False when a grant with this id exists already (a command producer chose the id)."""
    status = await conn.execute(
        """insert into credit_grants (tenant_id, id, customer_id, subscription_id, currency, amount, priority,
                                      effective_at, expires_at, description, remaining)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $6)
           on conflict (tenant_id, id) do nothing""",
        tenant_id, grant_id, customer_id, subscription_id, currency, amount, priority, effective_at, expires_at,
        description)
    return bool(status.endswith(" 1"))


async def get(conn: asyncpg.Connection, tenant_id: uuid.UUID, grant_id: uuid.UUID, *,
              for_update: bool = False) -> GrantRow | None:
    if for_update:  # lock the grant alone, then read its balances
        await conn.execute("select 1 from credit_grants where tenant_id = $1 and id = $2 for update",
                           tenant_id, grant_id)
    r = await conn.fetchrow(f"select {_COLUMNS} from credit_grants g {_BALANCES} where g.tenant_id = $1 and g.id = $2",
                            tenant_id, grant_id)
    return _row(r) if r else None


async def list_page(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, subscription_id: uuid.UUID | None,
                    customer_id: str | None, after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[GrantRow]:
    after_at, after_id = after if after else (None, None)
    rows = await conn.fetch(
        f"""select {_COLUMNS} from credit_grants g {_BALANCES}
            where g.tenant_id = $1
              and ($2::uuid is null or g.subscription_id = $2)
              and ($3::text is null or g.customer_id = $3)
              and ($4::timestamptz is null or (g.created_at, g.id) < ($4, $5))
            order by g.created_at desc, g.id desc limit $6""",
        tenant_id, subscription_id, customer_id, after_at, after_id, limit)
    return [_row(r) for r in rows]


async def open_grants(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_ids: Sequence[uuid.UUID],
                      customer_ids: Sequence[str], *, lock: bool = True) -> list[Grant]:
    """The grants a chunk may burn or expire: not voided, something left, of these
    subscriptions or (customer-wide) of these customers. Unless `lock` is false (a preview,
    read-only), locked FOR UPDATE in id order
    (the same order in every transaction, so two chunks sharing a customer's grant wait
    for each other rather than deadlock, and the second sees the first one's balance)."""
    rows = await conn.fetch(
        """select id, customer_id, subscription_id, currency, priority, effective_at, expires_at, remaining
             from credit_grants
            where tenant_id = $1 and remaining > 0 and voided_at is null
              and (subscription_id = any($2::uuid[])
                   or (subscription_id is null and customer_id = any($3::text[])))
            order by id""" + (" for update" if lock else ""),
        tenant_id, list(subscription_ids), list(customer_ids))
    return [Grant(r["id"], r["customer_id"], r["subscription_id"], r["currency"], r["priority"], r["effective_at"],
                  r["expires_at"], r["remaining"]) for r in rows]


async def add_entries(conn: asyncpg.Connection, tenant_id: uuid.UUID, entries: Sequence[Entry]) -> set[uuid.UUID]:
    """Append ledger rows (one that exists already is left as it is) and recompute the
    balances of their grants. Returns the ids of the grants whose rows were new."""
    if not entries:
        return set()
    rows = await conn.fetch(
        """insert into credit_entries (tenant_id, id, grant_id, kind, amount, subscription_id, invoice_request_id,
                                       run_id, occurred_at)
           select $1, u.id, u.grant_id, u.kind, u.amount, u.sub, u.req, u.run, u.at
             from unnest($2::uuid[], $3::uuid[], $4::text[], $5::numeric[], $6::uuid[], $7::uuid[], $8::uuid[],
                         $9::timestamptz[]) as u(id, grant_id, kind, amount, sub, req, run, at)
           on conflict (tenant_id, id) do nothing
           returning grant_id""",
        tenant_id, [entry_id(tenant_id, e.grant_id, e.kind, e.invoice_request_id) for e in entries],
        [e.grant_id for e in entries], [e.kind for e in entries], [e.amount for e in entries],
        [e.subscription_id for e in entries], [e.invoice_request_id for e in entries], [e.run_id for e in entries],
        [e.occurred_at for e in entries])
    grants = {r["grant_id"] for r in rows}
    await refresh_remaining(conn, tenant_id, grants)
    return grants


async def refresh_remaining(conn: asyncpg.Connection, tenant_id: uuid.UUID, grant_ids: set[uuid.UUID]) -> None:
    """remaining = amount - the sum of the grant's ledger; the table's check refuses a
    grant burned below zero (the whole transaction then fails: nothing is billed twice)."""
    if not grant_ids:
        return
    await conn.execute(
        """update credit_grants g
              set remaining = g.amount - coalesce((select sum(e.amount) from credit_entries e
                                                    where e.tenant_id = g.tenant_id and e.grant_id = g.id), 0)
            where g.tenant_id = $1 and g.id = any($2::uuid[])""",
        tenant_id, list(grant_ids))


async def void(conn: asyncpg.Connection, tenant_id: uuid.UUID, grant_id: uuid.UUID, at: datetime,
               amount: Decimal) -> None:
    """Mark the grant voided and record its rest in the ledger (the caller holds its lock)."""
    await conn.execute("update credit_grants set voided_at = $3 where tenant_id = $1 and id = $2",
                       tenant_id, grant_id, at)
    await add_entries(conn, tenant_id, [Entry(grant_id, "voided", amount, None, None, None, at)])

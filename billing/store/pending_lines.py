"""Rows of pending_lines: invoice lines made between billing runs (proration), billed by the next run.

A line is written once, already rounded (``pricing.Line``), under an id derived from its
subscription, its ``source`` (what made it: ``"change_plan:<request id>"`` ...) and its
position, so writing the same source again changes nothing. The billing run reads a
subscription's unbilled lines (``unbilled``), puts them into the invoice request it writes
and marks them billed (``mark_billed``) in the same transaction. Lines that are invoiced at
once are written already billed (``invoice_request_id=...``).
"""
from __future__ import annotations

import uuid
from decimal import Decimal
from fractions import Fraction
from typing import Iterable, Sequence

import asyncpg

from billing.domain.pricing import Line

__all__ = ["NAMESPACE", "line_id", "add", "unbilled", "mark_billed", "for_subscription"]

#: Namespace of pending line ids. Never change it: replays must find the same ids.
NAMESPACE = uuid.UUID("0d6c1f7e-5a43-4b8e-9d2f-6e1b7c3a9f50")

_COLUMNS = """id, subscription_id, currency, kind, description, metric_code, quantity, unit_price, amount,
              period_start, period_end, fraction_num, fraction_den, tier, source, created_at, invoice_request_id"""


def line_id(tenant_id: uuid.UUID, subscription_id: uuid.UUID, source: str, index: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{tenant_id}/{subscription_id}/{source}/{index}")


async def add(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID, currency: str,
              lines: Sequence[Line], source: str, *,
              invoice_request_id: uuid.UUID | None = None) -> list[uuid.UUID]:
    """Store ``lines`` (in this order) and return their ids. Idempotent per ``source``: lines
    that exist already are left as they are. ``invoice_request_id`` marks them billed at once."""
    if not lines:
        return []
    ids = [line_id(tenant_id, subscription_id, source, i) for i in range(len(lines))]
    fractions = [ln.fraction for ln in lines]
    await conn.execute(
        """insert into pending_lines (tenant_id, id, subscription_id, currency, kind, description, metric_code,
                                      quantity, unit_price, amount, period_start, period_end, fraction_num,
                                      fraction_den, tier, source, created_at, invoice_request_id)
           select $1, l.id, $2, $3, l.kind, l.description, l.metric_code, l.quantity, l.unit_price, l.amount,
                  l.period_start, l.period_end, l.fraction_num, l.fraction_den, l.tier, $4,
                  -- the statement's clock plus the position keeps the lines in order, also for
                  -- several statements in one transaction (now() would be the same for all)
                  c.at + (l.ord - 1) * interval '1 microsecond', $5
             from (select clock_timestamp() as at) c, unnest($6::uuid[], $7::text[], $8::text[], $9::text[], $10::numeric[], $11::numeric[],
                         $12::numeric[], $13::timestamptz[], $14::timestamptz[], $15::bigint[], $16::bigint[],
                         $17::int[])
                  with ordinality as l(id, kind, description, metric_code, quantity, unit_price, amount,
                                       period_start, period_end, fraction_num, fraction_den, tier, ord)
           on conflict (tenant_id, id) do nothing""",
        tenant_id, subscription_id, currency, source, invoice_request_id,
        ids, [ln.kind for ln in lines], [ln.description for ln in lines], [ln.metric_code for ln in lines],
        [ln.quantity for ln in lines], [ln.unit_price for ln in lines], [ln.amount for ln in lines],
        [ln.period_start for ln in lines], [ln.period_end for ln in lines],
        [f.numerator if f is not None else None for f in fractions],
        [f.denominator if f is not None else None for f in fractions],
        [ln.tier for ln in lines],
    )
    return ids


def to_line(row: asyncpg.Record) -> Line:
    num, den = row["fraction_num"], row["fraction_den"]
    return Line(
        kind=row["kind"],
        description=row["description"],
        metric_code=row["metric_code"],
        quantity=Decimal(row["quantity"]),
        unit_price=Decimal(row["unit_price"]),
        amount=Decimal(row["amount"]),
        period_start=row["period_start"],
        period_end=row["period_end"],
        fraction=Fraction(num, den) if num is not None else None,
        tier=row["tier"],
    )


async def unbilled(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                   subscription_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[tuple[uuid.UUID, Line]]]:
    """The unbilled lines of each subscription (only those that have some), oldest first."""
    rows = await conn.fetch(
        f"""select {_COLUMNS} from pending_lines
             where tenant_id = $1 and subscription_id = any($2::uuid[]) and invoice_request_id is null
             order by created_at, id""",
        tenant_id, list(subscription_ids),
    )
    out: dict[uuid.UUID, list[tuple[uuid.UUID, Line]]] = {}
    for r in rows:
        out.setdefault(r["subscription_id"], []).append((r["id"], to_line(r)))
    return out


async def mark_billed(conn: asyncpg.Connection, tenant_id: uuid.UUID, line_ids: list[uuid.UUID],
                      invoice_request_ids: list[uuid.UUID]) -> int:
    """Set each line's invoice request (pairwise); a line billed already keeps its first one.
    Returns the number of lines marked."""
    if len(line_ids) != len(invoice_request_ids):
        raise ValueError("line_ids and invoice_request_ids must have the same length")
    if not line_ids:
        return 0
    status = await conn.execute(
        """update pending_lines p set invoice_request_id = u.invoice_request_id
             from unnest($2::uuid[], $3::uuid[]) as u(id, invoice_request_id)
            where p.tenant_id = $1 and p.id = u.id and p.invoice_request_id is null""",
        tenant_id, line_ids, invoice_request_ids,
    )
    return int(status.split()[-1])


async def for_subscription(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                           subscription_id: uuid.UUID) -> list[asyncpg.Record]:
    """Every line of a subscription, billed or not, oldest first (tests, support)."""
    return await conn.fetch(
        f"select {_COLUMNS} from pending_lines where tenant_id = $1 and subscription_id = $2 order by created_at, id",
        tenant_id, subscription_id,
    )

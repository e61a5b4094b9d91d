"""Invoice requests outside a billing run: proration lines invoiced at once, a canceled
subscription's final lines.

``invoice_record`` builds the InvoiceRequest record (schemas/avro/invoice_request.avsc), the
one builder of it: the billing run (``billing.services.billing``) uses it too. ``enqueue``
writes one request to the outbox stream ``invoice_requests`` in the caller's transaction.

Ids: ``request_id(tenant, subscription, source)`` = uuid5 of the subscription and what
caused the request (``change_plan:<request id>``, ``cancel:<request id>``), in the
namespace of the billing run's ids, so a replayed cause names the same request and the
invoicing service can drop a duplicate. ``run_id`` is the nil UUID: no billing run made
the request.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Mapping, Sequence

import asyncpg

from billing import codec
from billing.domain.events import Stream
from billing.domain.invoicing import NAMESPACE
from billing.domain.money import decimal_to_str
from billing.domain.periods import to_us
from billing.domain.pricing import Line, total
from billing.domain.subscriptions import Subscription
from billing.store import outbox

STREAM = Stream.INVOICE_REQUESTS
#: run_id of a request that no billing run made.
NO_RUN = uuid.UUID(int=0)


def request_id(tenant_id: uuid.UUID, subscription_id: uuid.UUID, source: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{tenant_id}/{subscription_id}/{source}")


def line_record(ln: Line, times: Mapping[datetime, int] | None = None) -> dict:
    """The InvoiceLine record; `times`: microseconds of times known already (the period's
    bounds, which most lines share)."""
    original = getattr(ln, "original_period_start", None)
    start = times.get(ln.period_start) if times else None
    end = times.get(ln.period_end) if times else None
    return {
        "kind": ln.kind, "description": ln.description, "metric_code": ln.metric_code,
        "quantity": decimal_to_str(ln.quantity), "unit_price": decimal_to_str(ln.unit_price),
        "amount": decimal_to_str(ln.amount), "period_start_us": to_us(ln.period_start) if start is None else start,
        "period_end_us": to_us(ln.period_end) if end is None else end,
        "fraction": None if ln.fraction is None else f"{ln.fraction.numerator}/{ln.fraction.denominator}",
        "original_period_start_us": None if original is None else to_us(original),
    }


def invoice_record(*, tenant_id: uuid.UUID | str, invoice_request_id: uuid.UUID | str, run_id: uuid.UUID | str,
                   sub: Subscription, currency: str, period_start: datetime, period_end: datetime,
                   lines: Sequence[Line], issued_at: datetime | None = None) -> dict:
    """The InvoiceRequest record; subtotal and total are the exact sum of the rounded lines.
    The ids may be given as text already (a run formats them once)."""
    amount = decimal_to_str(total(lines))
    start, end = to_us(period_start), to_us(period_end)
    times = {period_start: start, period_end: end}
    return {
        "invoice_request_id": str(invoice_request_id), "tenant_id": str(tenant_id), "customer_id": sub.customer_id,
        "subscription_id": str(sub.id), "run_id": str(run_id), "currency": currency,
        "period_start_us": start, "period_end_us": end,
        "issued_at_us": to_us(issued_at or datetime.now(timezone.utc)),
        "lines": [line_record(ln, times) for ln in lines],
        "subtotal": amount, "total": amount, "metadata": dict(sub.metadata),
    }


async def enqueue(conn: asyncpg.Connection, tenant_id: uuid.UUID, record: dict) -> None:
    await outbox.enqueue(
        conn, tenant_id, stream=STREAM, key=record["invoice_request_id"].encode(),
        payload=codec.encode(codec.Schema.INVOICE_REQUEST, record),
        headers={"content-type": codec.content_type(codec.Schema.INVOICE_REQUEST),
                 "invoice-request-id": record["invoice_request_id"]},
    )


def span(lines: Sequence[Line]) -> tuple[datetime, datetime]:
    """The time the lines cover: earliest start to latest end."""
    return min(ln.period_start for ln in lines), max(ln.period_end for ln in lines)


def amount(lines: Sequence[Line]) -> Decimal:
    return total(lines)

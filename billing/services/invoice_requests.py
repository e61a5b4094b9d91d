"""Invoice requests: the one builder of the InvoiceRequest record and the one outbox path.

Every invoice request - a period a run or a change closed, a canceled subscription's late
usage, proration invoiced at once, an immediate cancel's final lines - is encoded by
`encode` and written by `enqueue`, to the outbox stream `invoice_requests`, keyed and
headed by its id, in the caller's transaction.

Ids outside a period close: `request_id(tenant, subscription, source)` = uuid5 of the
subscription and what caused the request (`change_plan:<request id>`, `cancel:<request
id>`, `late:<digest>`), in the namespace of the period ids, so a replayed cause names the
same request and the invoicing service can drop a duplicate. `NO_RUN` (the nil UUID) is
the run_id of a request no billing run made.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Mapping, Sequence

import asyncpg

from billing import codec, codec_invoice
from billing.domain.events import Stream
from billing.domain.invoicing import NAMESPACE
from billing.domain.money import decimal_to_str
from billing.domain.periods import to_us
from billing.domain.pricing import Line, total
from billing.domain.subscriptions import Subscription
from billing.services.clock_time import clock_headers
from billing.store import outbox

STREAM = Stream.INVOICE_REQUESTS
#: The request's `reason` field: a period's close; a crossed threshold (progressive billing).
PERIOD = "period"
THRESHOLD = "threshold"
#: run_id of a request that no billing run made.
NO_RUN = uuid.UUID(int=0)
_HEADERS = {"content-type": codec.content_type(codec.Schema.INVOICE_REQUEST)}
_KEY_HEADER = "invoice-request-id"

#: An encoded request ready for the outbox: (invoice request id as text, Avro payload).
Encoded = tuple[str, bytes]


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
                   lines: Sequence[Line], issued_at: datetime | None = None,
                   test_clock_id: uuid.UUID | str | None = None, reason: str | None = None,
                   threshold_id: uuid.UUID | str | None = None) -> dict:
    """The InvoiceRequest record (schemas/avro/invoice_request.avsc); subtotal and total are
    the exact sum of the rounded lines. The ids may be given as text already. `test_clock_id`:
    the test clock of the subscription (the request is a test-clock request; null otherwise).
    `reason`: PERIOD, THRESHOLD (with the `threshold_id` that made it) or None (the others)."""
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
        "test_clock_id": str(test_clock_id) if test_clock_id else None,
        "reason": reason, "threshold_id": str(threshold_id) if threshold_id else None,
    }


def encode(*, tenant_id: uuid.UUID | str, invoice_request_id: uuid.UUID | str, run_id: uuid.UUID | str,
           sub: Subscription, currency: str, lines: Sequence[Line],
           period: tuple[datetime, datetime] | None = None, issued_at: datetime | None = None,
           test_clock_id: uuid.UUID | str | None = None, reason: str | None = None,
           threshold_id: uuid.UUID | str | None = None) -> Encoded:
    """The one builder: an invoice request encoded for `enqueue`. `period` defaults to the
    time the lines cover (`span`)."""
    start, end = period or span(lines)
    record = invoice_record(tenant_id=tenant_id, invoice_request_id=invoice_request_id, run_id=run_id, sub=sub,
                            currency=currency, period_start=start, period_end=end, lines=lines, issued_at=issued_at,
                            test_clock_id=test_clock_id, reason=reason, threshold_id=threshold_id)
    return record["invoice_request_id"], codec_invoice.encode(record)


async def enqueue(conn: asyncpg.Connection, tenant_id: uuid.UUID, requests: list[Encoded],
                  test_clock_id: uuid.UUID | str | None = None) -> None:
    """The one outbox path: encoded requests, in this order, keyed and headed by their id.
    Written before a chunk's subscription events: the relay publishes in outbox order.
    Requests of a test clock's subscriptions (all of `requests`) carry its id in the
    `billing-test-clock` header too, so the invoicing service can keep them apart unread."""
    headers = {**_HEADERS, **clock_headers(test_clock_id)} if test_clock_id else _HEADERS
    await outbox.enqueue_keyed(conn, tenant_id, STREAM, headers, _KEY_HEADER, requests)


def span(lines: Sequence[Line]) -> tuple[datetime, datetime]:
    """The time the lines cover: earliest start to latest end."""
    return min(ln.period_start for ln in lines), max(ln.period_end for ln in lines)


def amount(lines: Sequence[Line]) -> Decimal:
    return total(lines)

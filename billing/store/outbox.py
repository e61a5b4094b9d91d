"""Rows of the outbox: events written with the change they announce, relayed to Kafka later.

`stream` is a logical name (billing.domain.events.Stream); the relay maps it to the
configured topic, so services never need topic settings.

The row's headers carry the trace context (`traceparent`) of the transaction that wrote it,
so the relay's publish span, and the message it publishes, continue that trace.
"""
from __future__ import annotations

import json
import uuid

import asyncpg

from billing import telemetry
from billing.store.db import json_text


async def enqueue(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, stream: str, key: bytes | None,
                  payload: bytes, headers: dict[str, str] | None = None) -> None:
    await conn.execute(
        "insert into outbox (tenant_id, stream, key, payload, headers) values ($1, $2, $3, $4, $5)",
        tenant_id, stream, key, payload, telemetry.inject(dict(headers or {})),
    )


async def enqueue_many(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                       rows: list[tuple[str, bytes | None, bytes, str]]) -> None:
    """Many rows in one statement, in this order (ids follow it, and the relay publishes in
    id order): (stream, key, payload, headers as JSON text)."""
    if not rows:
        return
    streams, keys, payloads, headers = (list(c) for c in zip(*rows))
    # The writer's trace context goes onto every row (as enqueue does), spliced into each
    # row's JSON object here: PostgreSQL then parses one document per row, not two and a
    # merge (on the right, so it wins over a key of the row, as `||` would).
    trace = telemetry.inject({})
    if trace:
        extra = json.dumps(trace)[1:]
        headers = [_splice(h, extra) for h in headers]
    await conn.execute(
        """insert into outbox (tenant_id, stream, key, payload, headers)
           select $1, s, k, p, h::jsonb
             from unnest($2::text[], $3::bytea[], $4::bytea[], $5::text[]) with ordinality as u(s, k, p, h, n)
            order by n""",
        tenant_id, streams, keys, payloads, headers,
    )


async def enqueue_keyed(conn: asyncpg.Connection, tenant_id: uuid.UUID, stream: str, headers: dict[str, str],
                        key_header: str, rows: list[tuple[str, bytes]]) -> None:
    """Many rows of one stream in one statement, in this order: (key as text, payload). Each
    row's headers are `headers`, the writer's trace context and its key under `key_header`
    (an invoice request's id). Two arrays instead of `enqueue_many`'s four, and no JSON
    text per row: the key is written once, the headers are built by PostgreSQL. The common
    headers are parsed once per statement (a subquery), not once per row, as a generic plan
    of the statement would (a parameter is no constant there)."""
    if not rows:
        return
    common = json_text(telemetry.inject(dict(headers)))
    await conn.execute(
        """insert into outbox (tenant_id, stream, key, payload, headers)
           select $1, $2, convert_to(k, 'UTF8'), p, (select $3::text::jsonb) || jsonb_build_object($4::text, k)
             from unnest($5::text[], $6::bytea[]) with ordinality as u(k, p, n)
            order by n""",
        tenant_id, stream, common, key_header, [k for k, _ in rows], [p for _, p in rows],
    )


def _splice(obj: str, members: str) -> str:
    """JSON object text `obj` with the members of another object's text (without its "{").
    Not an object (never, from this service): parsed and merged instead."""
    body = obj.rstrip()
    if not (body.startswith("{") and body.endswith("}")):
        return json.dumps({**json.loads(obj), **json.loads("{" + members)})
    return body[:-1] + (", " if body[1:-1].strip() else "") + members

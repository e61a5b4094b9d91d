"""Subscription events: built here, written to the outbox in the caller's transaction."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Mapping

import asyncpg

from billing import codec
from billing.domain.events import Stream
from billing.domain.periods import to_us
from billing.services.context import Caller
from billing.store import outbox

STREAM = Stream.SUBSCRIPTION_EVENTS
_NAMESPACE = uuid.UUID("8f6c1b0e-6a4e-4f43-9d38-3f1b0c2f7a11")


async def emit(conn: asyncpg.Connection, caller: Caller, *, event_type: str, subscription_id: str, customer_id: str,
               occurred_at: datetime, cause: str, from_status: str | None = None, to_status: str | None = None,
               reason: str | None = None, data: Mapping[str, str] | None = None) -> str:
    """Write one event to the outbox. Its id derives from the cause (the request or command
    id), so the same cause always yields the same event id, even if it is published twice."""
    event_id, key, payload, headers = build(
        caller, event_type=event_type, subscription_id=subscription_id, customer_id=customer_id,
        occurred_at=occurred_at, cause=cause, from_status=from_status, to_status=to_status, reason=reason, data=data)
    await outbox.enqueue(conn, caller.tenant_id, stream=STREAM, key=key, payload=payload, headers=headers)
    return event_id


def build(caller: Caller, *, event_type: str, subscription_id: str, customer_id: str, occurred_at: datetime,
          cause: str, from_status: str | None = None, to_status: str | None = None, reason: str | None = None,
          data: Mapping[str, str] | None = None) -> tuple[str, bytes, bytes, dict[str, str]]:
    """(event id, key, payload, headers) of one event, for callers that write many at once
    (`outbox.enqueue_many`, stream STREAM)."""
    event_id = str(uuid.uuid5(_NAMESPACE, f"{caller.tenant_id}/{subscription_id}/{cause}/{event_type}"))
    record = {
        "event_id": event_id, "tenant_id": str(caller.tenant_id), "subscription_id": subscription_id,
        "customer_id": customer_id, "type": event_type, "occurred_at_us": to_us(occurred_at),
        "from_status": from_status, "to_status": to_status if to_status != from_status else None,
        "command_id": caller.command_id, "request_id": None if caller.command_id else cause,
        "reason": reason, "data": {k: str(v) for k, v in (data or {}).items()},
    }
    payload = codec.encode(codec.Schema.SUBSCRIPTION_EVENT, record)
    headers = {"content-type": codec.content_type(codec.Schema.SUBSCRIPTION_EVENT), "event-type": event_type,
               "event-id": event_id}
    return event_id, (subscription_id or customer_id).encode(), payload, headers

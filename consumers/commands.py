"""The subscription command consumer: Kafka commands -> the same service functions as gRPC.

Per message, in the runner's batch transaction:
- undecodable, no command_id, or an unknown tenant -> dead-lettered with the reason;
- a valid command the rules refuse -> rolled back alone (savepoint) and answered with a
  `command.rejected` event, not dead-lettered: the producer made a legal request that the
  current state does not allow, which its owner wants to hear about on the events topic;
- otherwise applied, with `cmd:<command_id>` as the idempotency key, so a command produced
  twice, or replayed after a crash, applies once.

Each message gets its own span (`command <name>`), a child of the producer's trace when the
message carries a `traceparent` header (linked to the runner's batch span), so the database
transaction and the outbox row of its event (and the event the relay publishes) stay in the
producer's trace.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

import asyncpg
from opentelemetry import trace

from billing import codec
from billing.domain.periods import from_us
from billing.ops import tracing
from billing.ops.logging import current_tenant
from billing.services import credits, events, subscriptions, tenants
from billing.services.context import Caller
from billing.services.errors import DomainError, ValidationError
from billing.services.uow import ConnectionScope, in_batch
from billing.domain.events import EventType
from consumers.runner import BatchResult, DeadLetter, Message

log = logging.getLogger(__name__)



def _time(us: int | None, field: str) -> datetime | None:
    """A `*_us` field as a datetime; one outside datetime's range (an Avro long reaches far
    beyond year 9999) is a refused command, not a crash of the consumer on every replay."""
    if us is None:
        return None
    try:
        return from_us(us)
    except OverflowError:
        raise ValidationError(field, f"{us} is outside the supported time range") from None


MAX_COMMAND_ID = 251  # "cmd:" + command_id is the idempotency key, at most 255 characters


def _bad_ids(command: dict) -> str | None:
    """Why the command_id or subscription_id cannot even be answered with an event, or None."""
    cid, sid = command["command_id"], command["subscription_id"]
    if len(cid) > MAX_COMMAND_ID or not cid.isprintable():
        return f"command_id must be 1..{MAX_COMMAND_ID} printable characters (got {len(cid)})"
    if sid:
        try:
            uuid.UUID(sid)
        except ValueError:
            return f"subscription_id must be empty or a UUID, got {sid[:64]!r}"
    return None


Handler = Callable[[ConnectionScope, Caller, str, str, dict], Awaitable[object]]


async def _create(scope: ConnectionScope, caller: Caller, key: str, sub_id: str, body: dict) -> object:
    return await subscriptions.create_subscription(
        scope, caller, key, customer_id=body["customer_id"], plan_id=body["plan_id"],
        start_at=_time(body.get("start_at_us"), "start_at_us"),
        billing_anchor=_time(body.get("billing_anchor_us"), "billing_anchor_us"),
        trial_days=body.get("trial_days"), activate=body.get("activate", False),
        metadata=body.get("metadata") or {}, subscription_id=sub_id, time_zone=body.get("time_zone") or "",
    )


async def _activate(scope: ConnectionScope, caller: Caller, key: str, sub_id: str, body: dict) -> object:
    return await subscriptions.activate_subscription(scope, caller, key, sub_id)


async def _pause(scope: ConnectionScope, caller: Caller, key: str, sub_id: str, body: dict) -> object:
    return await subscriptions.pause_subscription(scope, caller, key, sub_id,
                                                  _time(body.get("resumes_at_us"), "resumes_at_us"))


async def _resume(scope: ConnectionScope, caller: Caller, key: str, sub_id: str, body: dict) -> object:
    return await subscriptions.resume_subscription(scope, caller, key, sub_id)


async def _cancel(scope: ConnectionScope, caller: Caller, key: str, sub_id: str, body: dict) -> object:
    return await subscriptions.cancel_subscription(scope, caller, key, sub_id, mode=body["mode"].lower(),
                                                   proration=body.get("proration", ""))


async def _change_plan(scope: ConnectionScope, caller: Caller, key: str, sub_id: str, body: dict) -> object:
    timing = body.get("timing", "DEFAULT").lower()
    return await subscriptions.change_plan(scope, caller, key, sub_id, body["new_plan_id"],
                                           timing="" if timing == "default" else timing,
                                           proration_behavior=body.get("proration_behavior", ""))


async def _grant_credit(scope: ConnectionScope, caller: Caller, key: str, sub_id: str, body: dict) -> object:
    return await credits.create_grant(
        scope, caller, key, amount=body["amount"], currency=body.get("currency", ""),
        priority=body.get("priority", 0), subscription_id=sub_id, customer_id=body.get("customer_id", ""),
        effective_at=_time(body.get("effective_at_us"), "effective_at_us"),
        expires_at=_time(body.get("expires_at_us"), "expires_at_us"), description=body.get("description", ""),
        grant_id=body.get("grant_id", ""))


# The command union's branch (its record name without namespace) -> its service call.
HANDLERS: dict[str, Handler] = {
    "CreateSubscription": _create,
    "ActivateSubscription": _activate,
    "PauseSubscription": _pause,
    "ResumeSubscription": _resume,
    "CancelSubscription": _cancel,
    "ChangePlan": _change_plan,
    "CreateCreditGrant": _grant_credit,
}


async def apply(scope: ConnectionScope, caller: Caller, command: dict) -> None:
    """Dispatch one decoded command to its service function, with `cmd:<command_id>` as the
    idempotency key."""
    name, body = command["command"]
    handler = HANDLERS.get(name.rsplit(".", 1)[-1])
    if handler is None:  # a union branch this version does not know: the codec refuses those first
        raise ValueError(f"unknown command {name}")
    await handler(scope, caller, f"cmd:{command['command_id']}", command["subscription_id"], body)


class CommandStrategy:
    """A BatchStrategy for the subscription command topic."""

    dead_letter_reasons = ("undecodable", "invalid_command", "unknown_tenant")

    async def process(self, conn: asyncpg.Connection, batch: list[Message]) -> BatchResult:
        dead: list[DeadLetter] = []
        scope = in_batch(conn)
        for msg in batch:
            span = tracing.start_message_span("command", msg.headers, attributes={
                "messaging.system": "kafka", "messaging.destination.name": msg.topic,
                "messaging.destination.partition.id": str(msg.partition), "messaging.kafka.offset": msg.offset})
            with trace.use_span(span, end_on_exit=True):
                letter = await self._one(scope, conn, msg, span)
                if letter is not None:
                    dead.append(letter)
                    span.set_attribute("billing.dead_letter_reason", letter.reason)
                    tracing.record_error(span, f"dead-lettered: {letter.reason}")
        return BatchResult(dead_letters=dead)

    async def _one(self, scope: ConnectionScope, conn: asyncpg.Connection, msg: Message, span) -> DeadLetter | None:
        try:
            command = codec.decode(codec.Schema.SUBSCRIPTION_COMMAND, msg.value)
        except codec.CodecError as exc:
            return DeadLetter(msg, "undecodable", str(exc))
        name = command["command"][0].rsplit(".", 1)[-1]
        span.update_name(f"command {name}")
        span.set_attribute("billing.command_id", command["command_id"])
        if not command["command_id"]:
            return DeadLetter(msg, "invalid_command", "command_id is empty")
        bad = _bad_ids(command)
        if bad:  # refusing it with an event would carry the absurd id on into the outbox and the relay
            return DeadLetter(msg, "invalid_command", bad)
        try:
            tenant_id = uuid.UUID(command["tenant_id"])
        except ValueError:
            return DeadLetter(msg, "unknown_tenant", f"tenant_id {command['tenant_id'][:64]!r} is not a UUID")
        if not await tenants.exists(conn, tenant_id):
            return DeadLetter(msg, "unknown_tenant", f"no tenant {tenant_id}")
        span.set_attribute("billing.tenant_id", str(tenant_id))
        span.set_attribute("billing.subscription_id", command["subscription_id"])
        caller = Caller(tenant_id, f"command:{msg.topic}", command_id=command["command_id"])
        token = current_tenant.set(str(tenant_id))
        try:
            await apply(scope, caller, command)
        except DomainError as exc:
            span.set_attribute("billing.command_rejected", type(exc).__name__)
            await self._reject(scope, caller, command, exc)
        finally:
            current_tenant.reset(token)
        return None

    async def _reject(self, scope: ConnectionScope, caller: Caller, command: dict, exc: DomainError) -> None:
        name = command["command"][0].rsplit(".", 1)[-1]
        async with scope.tenant_tx(caller.tenant_id) as conn:
            await events.emit(
                conn, caller, event_type=EventType.COMMAND_REJECTED, subscription_id=command["subscription_id"],
                customer_id="", occurred_at=datetime.now(timezone.utc), cause=f"cmd:{command['command_id']}",
                reason=str(exc), data={"command": name, "error": type(exc).__name__},
            )
        log.info("command rejected", extra={"command_id": command["command_id"], "reason": str(exc)})

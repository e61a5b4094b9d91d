"""A subscription's audit rows as the API's history entries (SubscriptionHistoryEntry).

The audit trail is append-only and keeps what it recorded: actions are event types
("subscription.created"), actors "api:<key id>", "command:<topic>", "billing-run:<run id>",
"system:scheduler". The proto promises other words, so they are mapped here, on read,
for old and new rows alike.
"""
from __future__ import annotations

import uuid

import asyncpg


def entry(row: asyncpg.Record) -> dict:
    before, after = row["before"] or {}, row["after"] or {}
    details = {k: str(v) for k, v in (after.get("details") or {}).items()}
    actor = history_actor(row["actor"], row["request_id"])
    if actor == "system" and row["actor"] != "system":
        details.setdefault("system_actor", row["actor"])  # e.g. "billing-run:<run id>"
    return {"at": row["at"], "action": history_action(row["action"]), "actor": actor,
            "from_status": before.get("status", ""), "to_status": after.get("status", ""), "details": details}


def history_action(stored: str) -> str:
    """The API's action of an audit row: the event type without its "subscription." prefix
    (the audit trail is append-only and keeps what it recorded; the API maps on read)."""
    return stored.removeprefix("subscription.")


def history_actor(stored: str, request_id: str | None) -> str:
    """The API's actor of an audit row, as the proto states it: "api_key:<key id>",
    "command:<command_id>" (the command's idempotency key is "cmd:<command_id>"), or
    "system" for the service's own jobs (billing runs, the scheduler, automatic resumes)."""
    if stored.startswith("api:"):
        return "api_key:" + _key_id_or_redacted(stored.removeprefix("api:"))
    if stored.startswith("command:"):
        if request_id and request_id.startswith("cmd:"):
            return "command:" + request_id.removeprefix("cmd:")
        return stored
    return "system"


def _key_id_or_redacted(recorded: str) -> str:
    # Rows written before the actor named the key's id hold the first characters of the
    # secret key itself: never shown again.
    try:
        return str(uuid.UUID(recorded))
    except ValueError:
        return "redacted"

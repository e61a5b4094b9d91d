"""Who is asking: the tenant (from the API key or the message) and an actor for the audit trail."""
from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    tenant_id: uuid.UUID
    # "api:<api key id>", "command:<topic>", "system:scheduler": recorded in the audit trail.
    actor: str
    # Set when the change comes from a Kafka command (its command_id), for the events it emits.
    command_id: str | None = None
    # The SHA-256 of the API key of the call, checked live when a transaction enters the
    # tenant (billing/store/db.py); None for the workers.
    api_key_hash: bytes | None = None

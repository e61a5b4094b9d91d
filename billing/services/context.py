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

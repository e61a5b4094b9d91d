"""The units of work the services run in, as the entry points name them.

The api holds a `Database` (a pool: one transaction per call); a consumer hands its batch
transaction to `in_batch`, so the service calls of a message join it and commit with the
stored offsets. The store implements both (billing/store/db.py); entry points import them
from here, so they depend on the services alone.
"""
from __future__ import annotations

import asyncpg

from billing.store.db import ConnectionScope, Database, entry_keys, reset_entry_keys, set_entry_keys

# entry_keys / set_entry_keys: the API keys whose calls the next transactions of this context
# serve, checked live as each transaction enters its tenant (billing/store/db.py).
__all__ = ["ConnectionScope", "Database", "entry_keys", "in_batch", "reset_entry_keys", "set_entry_keys"]


def in_batch(conn: asyncpg.Connection) -> ConnectionScope:
    """A `Database` look-alike on a connection already inside the consumer's transaction."""
    return ConnectionScope(conn)

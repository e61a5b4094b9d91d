"""The units of work the services run in, as the entry points name them.

The api holds a `Database` (a pool: one transaction per call); a consumer hands its batch
transaction to `in_batch`, so the service calls of a message join it and commit with the
stored offsets. The store implements both (billing/store/db.py); entry points import them
from here, so they depend on the services alone.
"""
from __future__ import annotations

import asyncpg

from billing.store.db import ConnectionScope, Database

__all__ = ["ConnectionScope", "Database", "in_batch"]


def in_batch(conn: asyncpg.Connection) -> ConnectionScope:
    """A `Database` look-alike on a connection already inside the consumer's transaction."""
    return ConnectionScope(conn)

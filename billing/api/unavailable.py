"""Which errors mean "the database is away" to the gRPC layer (answered UNAVAILABLE)."""
from __future__ import annotations

import asyncio

import asyncpg

# The database is away (restarting, unreachable, out of connections): not the request's
# fault and not a bug. UNAVAILABLE tells the client to retry the same call (every mutation
# carries a request_id, so a retry of one that did commit changes nothing).
UNAVAILABLE_ERRORS = (
    OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
UNAVAILABLE_MESSAGE = "the database is unavailable; retry the call (it is idempotent)"

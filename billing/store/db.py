"""The asyncpg pool and the tenant-scoped transaction every service call runs in.

Every `tenant_tx` is a span (`db.transaction`, with the tenant as an attribute) and sets the
tenant of the log lines written inside it.
"""
from __future__ import annotations

import contextvars
import json
import re
import uuid
from contextlib import asynccontextmanager, contextmanager
from typing import AsyncIterator, Iterator, Mapping, NamedTuple

import asyncpg
import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from billing.store import usage as usage_store
from billing.telemetry import current_tenant, direct_tracer


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await usage_store.prepare_session(conn)  # the usage batch's staging table, once per connection


def json_text(value) -> str:
    """JSON text of a document a billing run writes by the thousand (for a `$n::text::jsonb`
    parameter), by orjson, which writes datetimes and UUIDs itself in the audit trail's form
    (`datetime.isoformat()`, canonical UUID text; tests/unit/test_json_text.py). Why orjson:
    docs/decisions.md. Mappings that are not dicts and asyncpg's UUIDs: `_json_default`."""
    return orjson.dumps(value, default=_json_default).decode()


def _json_default(value):
    if isinstance(value, uuid.UUID):  # asyncpg's UUID subclass, which orjson does not take
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class TenantConnection(asyncpg.Connection):
    """A pool connection that saves two round trips per `tenant_tx`: the statement entering
    the tenant travels with BEGIN, and the pool's reset (advisory locks, cursors, LISTENs,
    session settings) with COMMIT, so releasing the connection sends nothing more.

    Only the text asyncpg's own `transaction()` sends is extended (simple queries, no
    parameters): nested transactions, savepoints and errors are asyncpg's own. A transaction
    that fails or rolls back gets the pool's full reset on release as usual."""

    _on_begin = ""
    _reset_with_commit = False
    _reset_sent = False

    def enter_on_begin(self, sql: str) -> None:
        self._on_begin = sql

    def reset_with_commit(self) -> None:
        self._reset_with_commit = True

    async def execute(self, query: str, *args, timeout: float | None = None) -> str:
        if not args and query == "BEGIN;" and self._on_begin:
            query, self._on_begin = f"BEGIN;{self._on_begin}", ""
        elif not args and query == "COMMIT;" and self._reset_with_commit:
            self._reset_with_commit = False
            status = await super().execute(f"COMMIT;{super().get_reset_query()}", timeout=timeout)
            self._reset_sent = True
            return status
        return await super().execute(query, *args, timeout=timeout)

    def skip_reset(self) -> None:
        """Only one statement ran, in its implicit transaction, leaving no session state."""
        self._reset_sent = True

    def get_reset_query(self) -> str:
        if self._reset_sent:  # the COMMIT just sent it; nothing ran on the connection since
            self._reset_sent = False
            return ""
        return super().get_reset_query()


class Entry(NamedTuple):
    """How a statement enters its tenant: the API keys of the call (checked live; the tenant
    token comes through them) or, with none, the token this process holds."""
    key_hashes: tuple[bytes, ...]
    token: str | None


class Database:
    def __init__(self, pool: asyncpg.Pool, url: str | None = None):
        self.pool = pool
        self.url = url  # for what needs a connection outside the pool (readiness)

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> "Database":
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init_connection,
                                         command_timeout=30, connection_class=TenantConnection)
        return cls(pool, url)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tenant_tx(self, tenant_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        """A transaction in which row-level security shows only this tenant's rows."""
        with _tx_span(tenant_id), _log_tenant(tenant_id):
            async with self.pool.acquire() as conn:
                if hasattr(conn, "enter_on_begin"):  # a TenantConnection: the pools of Database.connect
                    conn.enter_on_begin(_enter_sql(tenant_id, _entry_keys.get()))
                    async with conn.transaction():
                        yield conn
                        conn.reset_with_commit()  # only when the body succeeded: COMMIT follows
                else:
                    async with conn.transaction():
                        await set_tenant(conn, tenant_id)
                        yield conn

    @staticmethod
    def entry(tenant_id: uuid.UUID) -> Entry:
        """How a statement run now would enter the tenant (`tenant_statement` gives the same)."""
        keys = _entry_keys.get()
        return Entry(keys, None if keys else _tenant_tokens.get(tenant_id, ""))

    def tenant_statement(self, tenant_id: uuid.UUID) -> "_TenantStatement":
        """A connection for ONE statement that enters the tenant itself (a function given
        `Entry`: the call's API keys to check live, or the token this process holds), in its
        own implicit transaction: no BEGIN, no COMMIT, and nothing to reset on release (the
        tenant settings are transaction-local; no lock, cursor or LISTEN is left)."""
        return _TenantStatement(self.pool, tenant_id)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction with no tenant: row-level security shows no tenant rows at all."""
        with _tx_span(None):
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    yield conn


class ConnectionScope:
    """A `Database` look-alike bound to one connection already inside a transaction.

    The consumers use it so a service call joins the consumer's batch transaction (and so
    commits together with the stored Kafka offsets): each `tenant_tx` is a savepoint, so a
    refused command rolls back alone and the batch goes on.
    """

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    @asynccontextmanager
    async def tenant_tx(self, tenant_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        with _tx_span(tenant_id, savepoint=True), _log_tenant(tenant_id):
            async with self.conn.transaction():
                await set_tenant(self.conn, tenant_id)
                yield self.conn


class _tx_span:
    """The `db.transaction` span, current while the block runs: what `start_as_current_span`
    does (an exception of the block is recorded and sets the status), by hand: it runs for
    every call, and the generator-based context managers of `start_as_current_span` add to each."""

    __slots__ = ("attributes", "span", "token")

    def __init__(self, tenant_id: uuid.UUID | None, savepoint: bool = False):
        attributes: dict[str, str | bool] = {"db.system.name": "postgresql"}
        if tenant_id is not None:
            attributes["billing.tenant_id"] = str(tenant_id)
        if savepoint:
            attributes["billing.savepoint"] = True
        self.attributes = attributes

    def __enter__(self):
        self.span = direct_tracer().start_span("db.transaction", kind=SpanKind.CLIENT, attributes=self.attributes)
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind, exc, tb):
        otel_context.detach(self.token)
        span = self.span
        if isinstance(exc, Exception) and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


class _TenantStatement:
    """`Database.tenant_statement`'s block: the span, the log tenant and a pooled connection,
    as `tenant_tx` holds them, by hand rather than through a generator-based context manager
    (CheckEntitlement runs one per call)."""

    __slots__ = ("pool", "tenant_id", "span", "log", "acquiring", "conn")

    def __init__(self, pool: asyncpg.Pool, tenant_id: uuid.UUID):
        self.pool = pool
        self.tenant_id = tenant_id

    async def __aenter__(self) -> tuple[asyncpg.Connection, Entry]:
        self.span = _tx_span(self.tenant_id)
        self.span.__enter__()
        self.log = _log_tenant(self.tenant_id)
        self.log.__enter__()
        try:
            self.acquiring = self.pool.acquire()
            self.conn = await self.acquiring.__aenter__()
        except BaseException as e:
            self.log.__exit__(type(e), e, e.__traceback__)
            self.span.__exit__(type(e), e, e.__traceback__)
            raise
        return self.conn, Database.entry(self.tenant_id)

    async def __aexit__(self, kind, exc, tb) -> bool:
        try:
            if exc is None and hasattr(self.conn, "skip_reset"):
                self.conn.skip_reset()
            await self.acquiring.__aexit__(kind, exc, tb)
        finally:
            self.log.__exit__(kind, exc, tb)
            self.span.__exit__(kind, exc, tb)
        return False


class _log_tenant:
    def __init__(self, tenant_id: uuid.UUID):
        self.tenant = str(tenant_id)

    def __enter__(self):
        self.token = current_tenant.set(self.tenant)

    def __exit__(self, *exc):
        current_tenant.reset(self.token)


# Tenant tokens this process obtained by authenticating an API key (migration 016): the API
# role enters a tenant only with one. Workers enter any tenant without (their role may).
_tenant_tokens: dict[uuid.UUID, str] = {}


def remember_tenant_token(tenant_id: uuid.UUID, token: str) -> None:
    _tenant_tokens[tenant_id] = token


# The API keys of the calls a transaction serves (set by the API's authentication), checked
# live in the statement that enters the tenant (api_keys_live, migration 031): a key revoked
# a moment ago is refused there even if this process has not heard of the revocation yet.
_entry_keys: contextvars.ContextVar[tuple[bytes, ...]] = contextvars.ContextVar("billing_entry_keys", default=())
_HEX = re.compile(r"[0-9a-f]*")


@contextmanager
def entry_keys(keys: tuple[bytes, ...]) -> Iterator[None]:
    token = _entry_keys.set(keys)
    try:
        yield
    finally:
        _entry_keys.reset(token)


def set_entry_keys(keys: tuple[bytes, ...]) -> contextvars.Token:
    return _entry_keys.set(keys)


def reset_entry_keys(token: contextvars.Token) -> None:
    _entry_keys.reset(token)


def _enter_sql(tenant_id: uuid.UUID, keys: tuple[bytes, ...]) -> str:
    """`set_tenant` (and the key check) as literal SQL, to ride in BEGIN's simple query: the
    values are a canonical UUID and hex digests, nothing a caller can shape."""
    tenant = str(uuid.UUID(str(tenant_id)))
    if keys:
        # The tenant token as of now, through the caller's key: never a stale one when the
        # tenant secret was replaced since this process cached the key.
        hashes = [f"decode('{k.hex()}', 'hex')" for k in keys]
        token = f"(select token from authenticate_api_key_token({hashes[0]}))"
        check = f", api_keys_live(array[{', '.join(hashes)}])"
    else:
        known = _tenant_tokens.get(tenant_id, "")
        if not _HEX.fullmatch(known):
            raise ValueError("tenant token is not hex")
        token, check = f"'{known}'", ""
    return (f"select set_config('billing.tenant_id', '{tenant}', true), "
            f"set_config('billing.tenant_token', {token}, true){check};")


async def set_tenant(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
    # is_local=true: the settings end with the transaction, so a pooled connection never
    # carries one tenant's identity into the next request.
    await conn.execute("select set_config('billing.tenant_id', $1, true), set_config('billing.tenant_token', $2, true)",
                       str(tenant_id), _tenant_tokens.get(tenant_id, ""))

"""The database roles the service connects as, checked before it serves anything.

Tenant isolation is row-level security, and a role that bypasses it (a superuser, a role
with BYPASSRLS, the owner of the database or of the tenant tables, or a member of one) sees
every tenant: started as one, the service would run with no isolation at all. So the
service refuses to start. The API role must also not be a worker (a worker may enter any
tenant), and the worker role must be one (docs/operations.md, "Database roles").
"""
from __future__ import annotations

import asyncpg

from billing.store.db import Database

WORKER_ROLE = "billing_worker"

_FACTS = """
select current_user as name, r.rolsuper, r.rolbypassrls,
       pg_has_role(current_user, d.datdba, 'member') as owns_database,
       coalesce((select array_agg(distinct c.relowner::regrole::text order by c.relowner::regrole::text)
                   from pg_class c
                  where c.relnamespace = 'public'::regnamespace and c.relrowsecurity
                    and pg_has_role(current_user, c.relowner, 'member')), '{}') as owns_tables,
       exists (select 1 from pg_roles w where w.rolname = $1)
         and pg_has_role(current_user, $1, 'member') as worker
  from pg_roles r, pg_database d
 where r.rolname = current_user and d.datname = current_database()
"""


class UnsafeDatabaseRole(RuntimeError):
    """The service was configured to connect as a role that breaks tenant isolation."""


async def check_role(conn: asyncpg.Connection, purpose: str, setting: str) -> None:
    """Raise UnsafeDatabaseRole unless the connected role is fit for `purpose` ("api" or "worker")."""
    facts = await conn.fetchrow(_FACTS, WORKER_ROLE)
    problems = []
    if facts["rolsuper"]:
        problems.append("is a superuser")
    if facts["rolbypassrls"]:
        problems.append("has BYPASSRLS")
    if facts["owns_database"]:
        problems.append("owns the database (or is a member of its owner)")
    if facts["owns_tables"]:
        problems.append(f"owns the tenant tables (or is a member of {', '.join(facts['owns_tables'])})")
    if purpose == "api" and facts["worker"] and not problems:
        problems.append(f"is a member of {WORKER_ROLE}, which may enter any tenant")
    if purpose == "worker" and not facts["worker"] and not problems:
        problems.append(f"is not a member of {WORKER_ROLE}, so it cannot enter the tenants its messages name")
    if problems:
        raise UnsafeDatabaseRole(
            f"{setting} connects as role {facts['name']!r}, which {' and '.join(problems)}: "
            "row-level security would not isolate tenants. Connect as the role made for it "
            "(docs/operations.md, \"Database roles\")")


async def open_database(url: str, purpose: str, setting: str, *, min_size: int, max_size: int) -> Database:
    """A pool for `purpose`, once its role has passed check_role."""
    db = await Database.connect(url, min_size=min_size, max_size=max_size)
    try:
        async with db.pool.acquire() as conn:
            await check_role(conn, purpose, setting)
    except BaseException:
        await db.close()
        raise
    return db


async def open_databases(settings, roles: tuple[str, ...]) -> tuple[Database, Database | None]:
    """(the pool readiness and the API use, the workers' pool or None) for a process running
    `roles`: the API role's pool when it serves the API (or runs no worker role), the worker
    role's pool when it runs a consumer, the scheduler or the relay; each role checked first."""
    sizes = {"min_size": settings.db_pool_min, "max_size": settings.db_pool_max}
    workers = [r for r in roles if r != "api"]
    api_db = None
    if "api" in roles or not workers:
        api_db = await open_database(settings.database_url, "api", "BILLING_DATABASE_URL", **sizes)
    if not workers:
        return api_db, None
    try:
        worker_db = await open_database(settings.worker_database_url, "worker", "BILLING_WORKER_DATABASE_URL", **sizes)
    except BaseException:
        if api_db:
            await api_db.close()
        raise
    return api_db or worker_db, worker_db

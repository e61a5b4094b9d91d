"""What the benches set up alike: a new tenant with one metered plan, written straight into
the database as the owner (a bench measures one path, not the API that creates its data)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from billing.devstack import free_port
from billing.devstack.postgres import LocalPostgres
from billing.domain.plans import PlanInput, UsageChargeInput
from billing.domain.plan_storage import plan_to_dict
from billing.domain.plan_validation import parse_plan
from billing.services.tenants import create_tenant


async def metered_tenant(admin: asyncpg.Connection, prefix: str, *, base_fee: str, unit_price: str):
    """(the new tenant, as `create_tenant` returns it with its API key; the plan's id): a
    tenant named `<prefix>-<random>` with the plan "metered", EUR monthly in arrears,
    `base_fee` plus `unit_price` per call (metric "calls", sum)."""
    tenant = await create_tenant(admin, f"{prefix}-{uuid.uuid4().hex[:6]}")
    spec = parse_plan(PlanInput(code="metered", name="Metered", currency="EUR", interval="month", interval_count=1,
                                base_fee=base_fee, billing_timing="in_arrears", trial_days=0,
                                usage_charges=[UsageChargeInput("calls", "sum", "per_unit", unit_price=unit_price)]))
    plan_id = uuid.uuid4()
    await admin.execute("insert into plans (tenant_id, id, code, spec) values ($1, $2, 'metered', $3)",
                        tenant.tenant_id, plan_id, plan_to_dict(spec))
    return tenant, plan_id


async def copy_rows(admin: asyncpg.Connection, table: str, columns: list[str], records) -> None:
    """COPY many rows into a tenant table. PostgreSQL refuses COPY FROM into a table whose
    row-level security applies (FORCEd for the owner too), so the rows go through a temporary
    table of the same shape, then one INSERT ... SELECT under the owner's policy."""
    cols = ", ".join(columns)
    async with admin.transaction():
        await admin.execute(f"create temp table bench_copy (like {table} including defaults) on commit drop")
        await admin.copy_records_to_table("bench_copy", columns=columns, records=records)
        await admin.execute(f"insert into {table} ({cols}) select {cols} from bench_copy")


async def run_sql(dsn: str, *statements: str) -> None:
    """Each statement in turn, on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def stop_processes(procs) -> None:
    """Terminate every (process, log) pair's process, then wait for each (30 s, then kill)."""
    for proc, _ in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def stop_stack(stack, state, finished: bool, log) -> None:
    """Stop the bench's own servers (None: not started); their data and logs are removed after
    a finished run and kept, named by `log`, after a failed one."""
    if stack is not None:
        stack.stop()
    if finished:
        shutil.rmtree(state, ignore_errors=True)
    else:
        log(f"logs and data kept in {state}")


@contextmanager
def own_postgres(prefix: str, *, statements: bool = False) -> Iterator[LocalPostgres]:
    """A PostgreSQL server of the bench's own in a fresh directory, stopped at the end;
    `statements`: pg_stat_statements loaded (set, then a restart: it loads at start only)."""
    pg = LocalPostgres(Path(tempfile.mkdtemp(prefix=prefix)) / "pg", free_port())
    pg.start()
    try:
        if statements:
            pg._psql("alter system set shared_preload_libraries = 'pg_stat_statements'")
            pg.stop()
            pg.start()
        yield pg
    finally:
        pg.stop(quiet=True)

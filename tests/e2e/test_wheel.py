"""The built wheel, installed where no source tree is: `billing migrate` applies every
migration to an empty database and the codec decodes a message, with only what the wheel
ships (schemas/ and migrations/ as billing._schemas and billing._migrations).

Speed: the wheel is built from a copy of the tree without build isolation (setuptools of
the project's venv), and the fresh virtualenv gets its dependencies from the project's venv
through a .pth line rather than from the index. Only the path entry is added: that venv's
.pth files (the editable install's finder among them) are not run, so `billing` is imported
from the wheel alone, which the test checks.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import asyncpg
import pytest

from billing import codec
from billing.codec import Schema
from tests.conftest import PROJECT_ROOT
from tests.unit.test_codec import usage_event

SHIPPED = ["billing", "consumers", "producers", "schemas", "migrations", "pyproject.toml", "setup.py", "README.md"]

DECODE = """
import json, sys
import billing, billing.codec as codec
kind, record = codec.decode_any(bytes.fromhex(sys.argv[1]))
print(json.dumps({"file": billing.__file__, "schema": str(kind), "record": record}, default=str))
"""


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv outside the tree with the built wheel installed; its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SHIPPED:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", root / "dist", src)
    (wheel,) = (root / "dist").glob("billing_service-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps",
         "--no-index", wheel)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "zz_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_") and k != "PYTHONPATH"}
    env["BILLING_ENV_FILE"] = ""
    return env


async def _empty_database(stack, admin_url: str) -> tuple[str, str]:
    """A new empty database owned by billing_owner: (its admin URL, a server URL to drop it)."""
    server = stack.postgres.superuser_url if stack is not None else admin_url
    name = f"wheel_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server)
    try:
        try:
            await conn.execute(f"create database {name} owner billing_owner")
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("the test database's admin role may not create databases")
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}", server


async def test_installed_wheel_migrates_an_empty_database_and_decodes(installed, stack, settings, tmp_path):
    record = usage_event(7)
    message = codec.encode(Schema.USAGE_EVENT, record)
    decoded = json.loads(_run(installed / "python", "-c", DECODE, message.hex(), cwd=tmp_path, env=_env()).stdout)
    assert Path(decoded["file"]).is_relative_to(installed.parent), decoded["file"]  # the wheel's, not the tree's
    assert decoded["schema"] == str(Schema.USAGE_EVENT)
    assert decoded["record"] == json.loads(json.dumps(record, default=str))

    assert _run(installed / "billing", "--version", cwd=tmp_path, env=_env()).stdout.strip() == "billing 0.1.0"

    url, server = await _empty_database(stack, settings.admin_database_url)
    try:
        env = {**_env(), "BILLING_ADMIN_DATABASE_URL": url}
        applied = json.loads(_run(installed / "billing", "migrate", cwd=tmp_path, env=env).stdout)["applied"]
        shipped = sorted(p.name for p in (PROJECT_ROOT / "migrations").glob("*.sql"))
        assert applied == shipped and len(shipped) >= 17
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("select count(*) from schema_migrations") == len(shipped)
        finally:
            await conn.close()
        again = _run(installed / "billing", "migrate", cwd=tmp_path, env=env)
        assert json.loads(again.stdout) == {"applied": []}
    finally:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f"drop database if exists {url.rsplit('/', 1)[1]} with (force)")
        finally:
            await conn.close()


def test_no_migration_files_is_an_error(installed, settings, tmp_path):
    """An installation without its SQL files must not call an empty database migrated."""
    env = {**_env(), "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url,
           "BILLING_MIGRATIONS_DIR": str(tmp_path)}
    proc = subprocess.run([installed / "billing", "migrate"], capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"billing migrate: migration refused: no migration files (NNN_name.sql) in {tmp_path} "
        "(BILLING_MIGRATIONS_DIR)"]

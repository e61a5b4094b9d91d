"""Readiness without migration files to compare with is not ready, and says why: an
installation that lost its SQL files must never report an empty database as migrated."""
from __future__ import annotations

from billing.ops.readiness import Readiness


async def test_no_migration_files_is_not_ready(migrated, service, tmp_path):
    readiness = Readiness(service.db, migrated.kafka_bootstrap_servers, tmp_path, check_kafka=False,
                          export_metrics=False)
    try:
        assert await readiness.check_once() is False
        assert readiness.checks["postgres"] == "ok"
        assert readiness.checks["migrations"] == (f"broken: no migration files (NNN_name.sql) in {tmp_path} "
                                                  "(BILLING_MIGRATIONS_DIR)")
    finally:
        await readiness.close()

"""`billing devstack up` (like `billing dev`) writes the stack's settings to <state dir>/env:
every later `billing` command reaches that stack with no BILLING_* variable exported, an
exported one still wins, and `devstack down` removes the file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from billing.devstack import free_port
from tests.conftest import PROJECT_ROOT


def _billing(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "billing.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=PROJECT_ROOT)


def test_devstack_up_points_every_command_at_the_stack(tmp_path):
    state = tmp_path / "state"
    # No BILLING_* at all (the suite's BILLING_ENV_FILE="" included): as in a developer's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env["BILLING_STATE_DIR"] = str(state)
    ports = [str(free_port()) for _ in range(3)]
    stack = ["--pg-port", ports[0], "--kafka-port", ports[1], "--controller-port", ports[2]]
    up = _billing("devstack", "up", *stack, env=env, timeout=240)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        env_file = (state / "env").read_text()
        assert f"BILLING_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports[1]}\n" in env_file
        assert f"export BILLING_ADMIN_DATABASE_URL=postgresql://billing_owner:billing_owner@127.0.0.1:{ports[0]}" \
               "/billing" in up.stdout

        migrate = _billing("migrate", env=env)
        assert migrate.returncode == 0, migrate.stderr
        assert len(json.loads(migrate.stdout)["applied"]) == len(list((PROJECT_ROOT / "migrations").glob("*.sql")))
        topics = _billing("topics", env=env)  # replication 1 / 1 from the file: one broker
        assert topics.returncode == 0, topics.stderr
        assert "billing.usage.v1" in json.loads(topics.stdout)["created"]

        nowhere = free_port()
        explicit = {**env, "BILLING_ADMIN_DATABASE_URL": f"postgresql://billing_owner:x@127.0.0.1:{nowhere}/billing"}
        refused = _billing("migrate", env=explicit)
        assert refused.returncode == 2
        assert f"cannot reach PostgreSQL at 127.0.0.1:{nowhere} (BILLING_ADMIN_DATABASE_URL)" in refused.stderr
    finally:
        down = _billing("devstack", "down", *stack, env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not (state / "env").exists()
    after = subprocess.run([sys.executable, "-c", "from billing.config import Settings; "
                            "print(Settings().kafka_bootstrap_servers)"], env=env, capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert after.stdout.strip() == "127.0.0.1:9092"  # the default again

"""The chaos harness: a dedicated PostgreSQL + Kafka, one `billing serve` process per role,
a supervisor that restarts what dies, and the faults: SIGKILL a role, restart the broker,
restart the database.

Everything here is blocking and thread-safe enough to be called from `asyncio.to_thread`;
the test drives it from its event loop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from billing.config import Settings
from billing.devstack import LocalStack, free_port

ROLES = ("api", "commands", "usage", "billing", "scheduler", "relay")


@dataclass
class Counts:
    role_kills: dict[str, int] = field(default_factory=dict)
    kafka_restarts: int = 0
    kafka_kills: int = 0  # of the restarts, how many were SIGKILL rather than SIGTERM
    postgres_restarts: int = 0
    postgres_crashes: int = 0  # of the restarts, how many were `pg_ctl stop -m immediate`
    self_exits: list[str] = field(default_factory=list)  # role processes that died on their own

    @property
    def kills(self) -> int:
        return sum(self.role_kills.values())

    def summary(self) -> str:
        per_role = ",".join(f"{r}:{n}" for r, n in sorted(self.role_kills.items()))
        return (f"kills={self.kills} ({per_role}) kafka_restarts={self.kafka_restarts} "
                f"(sigkill {self.kafka_kills}) postgres_restarts={self.postgres_restarts} "
                f"(immediate {self.postgres_crashes}) self_exits={len(self.self_exits)}"
                + (f" ({','.join(sorted(self.self_exits))})" if self.self_exits else ""))


class RoleProcess:
    """One `billing serve --roles <role>` process, restartable."""

    def __init__(self, role: str, env: dict, log_dir: Path, name: str | None = None):
        self.role = role  # what --roles gets: one role, or several comma-separated
        self.name = name or role  # unique per process (two usage consumers: usage-1, usage-2)
        self.env = env
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.log_path, "a")
        log.write(f"\n----- start #{self.starts + 1} at {time.strftime('%H:%M:%S')} -----\n")
        log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", self.role],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 45) -> int | None:
        """SIGTERM, wait; the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""


class Cluster:
    """The dedicated stack plus the role processes."""

    def __init__(self, state_dir: Path, *, roles=ROLES, scheduler_interval_s: int = 5,
                 usage_batch_size: int = 2000, stack: LocalStack | None = None):
        """`roles`: one process per entry, a role name or (process name, --roles value);
        `stack`: a stack of the caller's (a Kafka cluster), else a one-broker one of its own."""
        base = Settings()
        self.state_dir = state_dir
        self.stack = stack or LocalStack.create(state_dir, pg_port=free_port(), kafka_port=free_port(),
                                                controller_port=free_port(), kafka_version=base.kafka_version,
                                                kafka_cache_dir=base.kafka_cache_dir)
        self.grpc_port = free_port()
        self.settings = Settings(**self.stack.settings_kwargs(), grpc_port=self.grpc_port, http_port=free_port(),
                                 db_pool_min=1, db_pool_max=4)
        self.log_dir = state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        specs = [r if isinstance(r, tuple) else (r, r) for r in roles]
        self.roles = tuple(name for name, _ in specs)
        self.counts = Counts()
        self._lock = threading.RLock()  # one fault at a time; the supervisor waits for it
        base_env = dict(os.environ)
        base_env.update({**self.stack.env(), "BILLING_LOG_LEVEL": "INFO", "BILLING_SCHEDULER_INTERVAL_S": "0",
                         "BILLING_USAGE_BATCH_SIZE": str(usage_batch_size), "BILLING_DB_POOL_MIN": "1",
                         "BILLING_DB_POOL_MAX": "4"})
        self.procs: dict[str, RoleProcess] = {}
        for name, role in specs:
            env = dict(base_env, BILLING_HTTP_PORT=str(free_port()))
            if "api" in role.split(","):
                env["BILLING_GRPC_PORT"] = str(self.grpc_port)
            if "scheduler" in role.split(","):
                env["BILLING_SCHEDULER_INTERVAL_S"] = str(scheduler_interval_s)
            self.procs[name] = RoleProcess(role, env, self.log_dir, name=name)
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.timeline: list[str] = []
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self._t0:7.1f}s {what}")

    def start_stack(self) -> None:
        self.stack.start(timeout_s=180)
        self.note("stack started")

    def start_roles(self) -> None:
        for p in self.procs.values():
            p.start()
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        """Restart a role process that exited on its own (a role that fails exits non-zero
        by design, e.g. when the database stayed away too long at start-up)."""
        while self._supervising.is_set():
            with self._lock:
                if not self._supervising.is_set():
                    break
                for p in self.procs.values():
                    if p.proc is not None and p.proc.poll() is not None:
                        self.counts.self_exits.append(f"{p.name}:{p.proc.returncode}")
                        self.note(f"{p.name} exited on its own with {p.proc.returncode}; restarted")
                        p.start()
            time.sleep(0.5)

    def stop_supervising(self) -> None:
        self._supervising.clear()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)

    def stop_role(self, role: str) -> int | None:
        with self._lock:
            code = self.procs[role].terminate()
            self.procs[role].proc = None
            return code

    def stop_roles(self) -> dict[str, int | None]:
        """Graceful stop of every role; their exit codes."""
        self.stop_supervising()
        return {role: p.terminate() for role, p in self.procs.items() if p.proc is not None}

    def shutdown(self) -> None:
        self.stop_supervising()
        for p in self.procs.values():
            if p.alive():
                p.kill()
        try:
            self.stack.stop()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass

    # ------------------------------------------------------------------ faults

    def kill_role(self, role: str, down_s: float) -> None:
        with self._lock:
            self.procs[role].kill()
            self.counts.role_kills[role] = self.counts.role_kills.get(role, 0) + 1
            self.note(f"SIGKILL {role}, down {down_s:.1f}s")
            time.sleep(down_s)
            self.procs[role].start()

    # The broker and the database restart without the lock: role kills go on meanwhile (a
    # broker stopped with SIGTERM takes 10-30 s to go, and as long to recover from SIGKILL).

    def restart_kafka(self, sigkill: bool, down_s: float) -> None:
        self.note(f"Kafka {'SIGKILL' if sigkill else 'SIGTERM'}, down {down_s:.1f}s")
        self.stack.kafka.stop(kill=sigkill)
        self.counts.kafka_restarts += 1
        self.counts.kafka_kills += int(sigkill)
        time.sleep(down_s)
        self.stack.kafka.start(timeout_s=180)
        self.note("Kafka back")

    def restart_postgres(self, immediate: bool, down_s: float) -> None:
        self.note(f"PostgreSQL stop -m {'immediate' if immediate else 'fast'}, down {down_s:.1f}s")
        self.stack.postgres.stop(mode="immediate" if immediate else "fast")
        self.counts.postgres_restarts += 1
        self.counts.postgres_crashes += int(immediate)
        time.sleep(down_s)
        self.stack.postgres.start(timeout_s=180)
        self.note("PostgreSQL back")

    def logs_tail(self, n: int = 1500) -> str:
        return "\n".join(f"=== {role} ===\n{p.tail(n)}" for role, p in self.procs.items())

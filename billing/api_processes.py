"""BILLING_GRPC_PROCESSES: several API processes on one gRPC port.

One asyncio loop answers the calls of a process, so on a machine with more cores than that
loop uses, the first process (the one `billing serve` started, with every role asked for)
starts `BILLING_GRPC_PROCESSES - 1` more running the api role alone. All bind the same
port with SO_REUSEPORT and the kernel spreads the connections among them. Each has its own
pool (BILLING_DB_POOL_MAX connections), group-commit window, key cache, readiness and gRPC
health, and its own HTTP side port, BILLING_HTTP_PORT + i for process i (1, 2, ...), whose
/metrics covers that process only: scrape every port (docs/operations.md).

The first process watches the others: one that exits while the service runs stops the whole
service with a non-zero exit, so the supervisor restarts it all (the same rule as a failed
role); SIGTERM drains and stops them with it. On Linux each extra process also gets SIGTERM
if the first one dies (PR_SET_PDEATHSIG), so none is left holding the port.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import subprocess
import sys

from billing.config import Settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's process group handles it
        pass


class ApiProcesses:
    """The extra API processes, started, watched and stopped by the first."""

    def __init__(self, settings: Settings):
        self.count = settings.grpc_processes - 1
        self.procs: list[subprocess.Popen] = []
        self._stopping = False

    def start(self) -> None:
        for i in range(1, self.count + 1):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "billing.cli", "serve", "--roles", "api", "--api-process", str(i)],
                preexec_fn=_die_with_parent))
        log.info("extra API processes started", extra={"pids": [p.pid for p in self.procs]})

    async def watch(self, failed: asyncio.Event) -> None:
        while not self._stopping:
            for i, proc in enumerate(self.procs, start=1):
                if proc.poll() is not None and not self._stopping:
                    log.error("API process %d exited with %s: stopping the service", i, proc.returncode)
                    failed.set()
                    return
            await asyncio.sleep(0.5)

    def terminate(self) -> None:
        """SIGTERM to each: they drain and stop as the first one does."""
        self._stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()

    async def wait(self, timeout_s: float) -> None:
        self.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("API process %d did not stop in time: killed", proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)


def settings_of_process(settings: Settings, index: int) -> Settings:
    """The settings of extra process `index`: its own HTTP side port."""
    if not 1 <= index < settings.grpc_processes:
        raise ValueError(f"--api-process must be 1..{settings.grpc_processes - 1} (BILLING_GRPC_PROCESSES)")
    return settings.model_copy(update={"http_port": settings.http_port + index})

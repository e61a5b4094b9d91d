"""CPU time of the processes a bench started itself, and of nothing else on the machine.

Other stacks (tests, other benches) may run their own PostgreSQL and Kafka beside a bench, so
processes are never picked by name: each figure is a process tree from a root pid the bench
knows (the postmaster of its data directory, its broker, its consumer processes). A tree's CPU
is every live member's own time plus the time of the children its members have already
reaped (a PostgreSQL backend that ended is counted in the postmaster's children times)."""
from __future__ import annotations

from pathlib import Path

import psutil


def tree_cpu_s(root_pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by `root_pid` and all its descendants, reaped
    ones included; None if there is no such process."""
    if root_pid is None:
        return None
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile: its parent counts it once reaped
        total += t.user + t.system + t.children_user + t.children_system
    return total


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the PostgreSQL server of `data_dir` (first line of its postmaster.pid)."""
    try:
        return int((Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def kafka_pid(data_dir: Path) -> int | None:
    """The pid of the broker the devstack started in `data_dir` (its kafka.pid)."""
    try:
        return int((Path(data_dir) / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


class CpuMeter:
    """Named process trees, read together: `read()` -> {name: CPU seconds or None}; a name
    with several roots (consumer processes) adds them up."""

    def __init__(self, **roots: list[int | None] | int | None):
        self.roots = {name: pids if isinstance(pids, list) else [pids] for name, pids in roots.items()}

    def read(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, pids in self.roots.items():
            values = [v for v in (tree_cpu_s(p) for p in pids) if v is not None]
            out[name] = sum(values) if values else None
        return out

    @staticmethod
    def used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
        return {k: None if before.get(k) is None or after.get(k) is None else after[k] - before[k]  # type: ignore
                for k in after}


def per_read(cpu: dict[str, float | None], calls: int) -> dict[str, float | None]:
    """CPU µs per call of each tree of `CpuMeter.used`."""
    return {k: None if v is None or not calls else round(v / calls * 1e6, 1) for k, v in cpu.items()}

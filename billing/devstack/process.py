"""Stopping a server the devstack started in a session of its own (start_new_session=True)."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process's whole group (a JVM's children too), SIGKILL it after `grace_s`;
    a group already gone is not an error."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass

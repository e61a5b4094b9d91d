"""The abuse suite (issue #8 items 2-4): gRPC fuzzing, topic abuse, the tenant isolation matrix.

Bounded by default so it runs in `make test`; `FUZZ_EXAMPLES=3000` (examples per RPC and
per topic fuzz) makes the big run. Every fuzz test tallies the statuses it saw; the tally
is printed at the end of the session and, with FUZZ_REPORT=<path>, written there as JSON.
"""
from __future__ import annotations

import json
import os
from tests.abuse.tally import TALLY


def pytest_configure(config):
    config.addinivalue_line("markers", "abuse: fuzzing and abuse of the gRPC API and the topics (issue #8)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TALLY:
        return
    terminalreporter.section("abuse: outcomes per RPC / topic fuzz")
    for (area, name), counts in sorted(TALLY.items()):
        total = sum(counts.values())
        shown = ", ".join(f"{k}={v}" for k, v in counts.most_common())
        terminalreporter.write_line(f"{area:8} {name:22} examples={total:6}  {shown}")
    path = os.environ.get("FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({f"{a}/{n}": dict(c) for (a, n), c in sorted(TALLY.items())}, f, indent=2, sort_keys=True)

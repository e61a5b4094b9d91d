"""The README runs as written: every shell and Python block of README.md, in order, against
the suite's stack, as a user would run them (the first-invoice walk-through twice).

The blocks take the API key and the addresses from the variables the README exports (KEY,
GRPC, KAFKA; TENANT and SUB from the walk-through's own `export` line), and `Settings()`
from BILLING_* variables: the test sets those in the environment of each block and never
edits a block. A block that is not meant to run here is preceded by
`<!-- not run: reason -->`; a block of another language without one fails the test, so a new
example cannot go untested by accident. Fences without a language are printed output.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.kafka_helpers import running_roles

README = PROJECT_ROOT / "README.md"
RUNNABLE = {"python", "sh"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")
_EXPORT = re.compile(r"^export TENANT=(\S+) SUB=(\S+)$", re.MULTILINE)


@dataclass
class Block:
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason given by a `<!-- not run: ... -->` marker right above


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        above = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = _NOT_RUN.match(above)
        blocks.append(Block(start + 1, fence.group(1), "\n".join(body) + "\n", marker and marker.group(1)))
        i += 1
    return blocks


def _grpcurl() -> str | None:
    return shutil.which("grpcurl") or next(
        (str(p) for p in [Path.home() / "go" / "bin" / "grpcurl"] if p.is_file()), None)


def _run(block: Block, env: dict) -> str:
    argv = [sys.executable, "-c", block.code] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c", block.code]
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"README.md:{block.line} ({block.lang}) failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_block_is_runnable_or_says_why_not():
    blocks = readme_blocks(README.read_text())
    assert sum(b.lang in RUNNABLE and not b.not_run for b in blocks) >= 5
    unmarked = [f"README.md:{b.line} ({b.lang})" for b in blocks if b.lang and b.lang not in RUNNABLE and not b.not_run]
    assert not unmarked, f"blocks neither run nor marked `<!-- not run: reason -->`: {unmarked}"


def _check_walkthrough(out: str) -> tuple[str, str]:
    lines = out.splitlines()
    assert "BILLING_RUN_STATUS_COMPLETED EUR 22.49" in lines, out
    assert lines[-2:] == ["base_fee 19.99", "usage 2.50"], out
    exported = _EXPORT.search(out)
    assert exported, out
    return exported.group(1), exported.group(2)


async def test_readme_runs_as_written(migrated, service, tenant):
    env = dict(os.environ)
    env.update({
        "KEY": tenant.api_key, "GRPC": service.grpc.address, "KAFKA": migrated.kafka_bootstrap_servers,
        "BILLING_DATABASE_URL": migrated.database_url,
        "BILLING_WORKER_DATABASE_URL": migrated.worker_database_url,
        "BILLING_ADMIN_DATABASE_URL": migrated.admin_database_url,
        "BILLING_KAFKA_BOOTSTRAP_SERVERS": migrated.kafka_bootstrap_servers,
    })
    grpcurl = _grpcurl()
    if grpcurl:
        env["PATH"] = f"{Path(grpcurl).parent}{os.pathsep}{env['PATH']}"
    ran, skipped, subs = [], [], []
    async with running_roles(migrated, ("billing", "relay")):
        for block in readme_blocks(README.read_text()):
            if block.lang not in RUNNABLE or block.not_run:
                continue
            if block.code.lstrip().startswith("grpcurl") and not grpcurl:
                skipped.append(f"README.md:{block.line}: grpcurl is not installed")
                continue
            times = 2 if "invoice-requests" in block.code else 1
            for _ in range(times):
                out = await asyncio.to_thread(_run, block, env)
                if times == 2:
                    tenant_id, sub_id = _check_walkthrough(out)
                    assert tenant_id == tenant.id
                    subs.append(sub_id)
                    env.update(TENANT=tenant_id, SUB=sub_id)
                if "ListPlans" in block.code and grpcurl:
                    assert "'pro'" in out, out  # the plan the grpcurl example created
            ran.append(block.line)
    assert len(subs) == 2 and subs[0] != subs[1], "the walk-through ran twice, each time for a subscription of its own"
    assert len(ran) >= 4, ran
    for reason in skipped:  # in the warnings summary: the other blocks ran
        warnings.warn(f"{reason} (go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest)", stacklevel=1)

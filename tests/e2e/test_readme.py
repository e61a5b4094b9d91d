"""The README runs as written: every shell and Python block of README.md, in order, against
the suite's stack, as a user would run them (the first-invoice walk-through twice).

The blocks take the API key and the addresses from the variables the README exports (KEY,
GRPC, KAFKA; TENANT and SUB from the walk-through's own `export` line), and `Settings()`
from BILLING_* variables: the test sets those in the environment of each block and never
edits a block; the CLI examples find the API and the key through BILLING_API_ADDRESS and
BILLING_API_KEY, and `billing seed` the tenant through a state directory holding the demo
tenant as `billing dev` writes it. Which blocks run and the `<!-- not run: reason -->`
marker: tests/doc_blocks.py (docs/*.md: tests/e2e/test_doc_blocks.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import warnings
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.doc_blocks import RUNNABLE, Block, blocks, run, tool
from tests.kafka_helpers import running_roles

README = PROJECT_ROOT / "README.md"
_EXPORT = re.compile(r"^export TENANT=(\S+) SUB=(\S+)$", re.MULTILINE)


def readme_blocks(text: str) -> list[Block]:
    return blocks(text)


def _grpcurl() -> str | None:
    return tool("grpcurl")


def _run(block: Block, env: dict) -> str:
    return run(block, env, "README.md")


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


async def test_readme_runs_as_written(migrated, service, tenant, tmp_path):
    (tmp_path / "demo-tenant.json").write_text(json.dumps({"tenant_id": tenant.id, "api_key": tenant.api_key}))
    env = dict(os.environ)
    env.update({
        "KEY": tenant.api_key, "GRPC": service.grpc.address, "KAFKA": migrated.kafka_bootstrap_servers,
        "BILLING_API_ADDRESS": service.grpc.address, "BILLING_API_KEY": tenant.api_key,
        "BILLING_STATE_DIR": str(tmp_path),
        "BILLING_DATABASE_URL": migrated.database_url,
        "BILLING_WORKER_DATABASE_URL": migrated.worker_database_url,
        "BILLING_ADMIN_DATABASE_URL": migrated.admin_database_url,
        "BILLING_KAFKA_BOOTSTRAP_SERVERS": migrated.kafka_bootstrap_servers,
    })
    grpcurl = _grpcurl()
    if grpcurl:
        env["PATH"] = f"{Path(grpcurl).parent}{os.pathsep}{env['PATH']}"
    ran, skipped, subs = [], [], []
    async with running_roles(migrated, ("usage", "billing", "relay")):
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
                if "billing seed" in block.code:  # the CLI examples
                    assert '"plan_code": "demo-seed"' in out and '"status": "BILLING_RUN_STATUS_COMPLETED"' in out, out
                    assert f'"subscription_id": "{env["SUB"]}"' in out, out  # invoices tail, filtered
            ran.append(block.line)
    assert len(subs) == 2 and subs[0] != subs[1], "the walk-through ran twice, each time for a subscription of its own"
    assert len(ran) >= 4, ran
    for reason in skipped:  # in the warnings summary: the other blocks ran
        warnings.warn(f"{reason} (go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest)", stacklevel=1)

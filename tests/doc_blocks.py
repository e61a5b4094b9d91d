"""The code blocks of a Markdown page, for the tests that run the README and docs/ as
written (tests/e2e/test_readme.py, tests/e2e/test_doc_blocks.py).

A ```sh or ```python block is run; a block that is not meant to run here is preceded by
`<!-- not run: reason -->` (the reason is required); a block of another language without
that marker fails the test, so a new example cannot go untested by accident. Fences
without a language are printed output or text and are never run.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = {"python", "sh"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")


@dataclass
class Block:
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason given by a `<!-- not run: ... -->` marker right above

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and not self.not_run


def blocks(text: str) -> list[Block]:
    found, lines, i = [], text.splitlines(), 0
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
        found.append(Block(start + 1, fence.group(1), "\n".join(body) + "\n", marker and marker.group(1)))
        i += 1
    return found


def unmarked(page: Path) -> list[str]:
    """Blocks of a language we do not run, without a `not run` marker."""
    return [f"{page.name}:{b.line} ({b.lang})" for b in blocks(page.read_text())
            if b.lang and b.lang not in RUNNABLE and not b.not_run]


def tool(name: str) -> str | None:
    """A command the examples use (grpcurl, kcat): on PATH, or where `go install` puts it."""
    return shutil.which(name) or next((str(p) for p in [Path.home() / "go" / "bin" / name] if p.is_file()), None)


def run(block: Block, env: dict, where: str, timeout: float = 60) -> str:
    argv = [sys.executable, "-c", block.code] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c", block.code]
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{where}:{block.line} ({block.lang}) failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout

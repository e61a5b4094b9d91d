"""Compile hot pure-Python modules with mypyc, optionally (billing/native.py says how they are
used; docs/decisions.md, "Compiled hot paths", why).

    python -m billing.devtools.native_build consumers/usage_avro.py ...   # what `make install` runs

Each source is compiled on its own, as a module named after it (`consumers__usage_avro`),
from a copy that ends with the SHA-256 of the source, into `billing/_native/`. A build that
fails (no C compiler, no Python headers, no mypyc, a type error mypyc refuses) removes the
module's old build, prints why and leaves the pure module in use: the exit status is 0
unless `--strict`. Each new build is loaded once through `billing.native.compiled` before
it is kept."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from billing.native import DIGEST, NATIVE_DIR, native_name, source_digest

ROOT = Path(__file__).resolve().parents[2]
_MYPY_CONFIG = """[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
"""


def module_name(source: Path) -> str:
    return ".".join(source.resolve().relative_to(ROOT).with_suffix("").parts)


def _old_builds(name: str) -> list[Path]:
    return list(NATIVE_DIR.glob(f"{name}.*")) if NATIVE_DIR.is_dir() else []


def build(source: Path) -> str | None:
    """Compile one source into NATIVE_DIR; None when done, else why not."""
    module = module_name(source)
    name = native_name(module)
    for old in _old_builds(name):  # never leave an older build behind a failed one
        old.unlink()
    try:
        return _build(source, module, name)
    except (OSError, subprocess.TimeoutExpired) as exc:  # the build is optional: say why, never fail
        for left in _old_builds(name):
            left.unlink()
        return f"{type(exc).__name__}: {exc}"


def _build(source: Path, module: str, name: str) -> str | None:
    text = source.read_bytes()
    with tempfile.TemporaryDirectory(prefix="native-build-") as tmp:
        work = Path(tmp)
        (work / f"{name}.py").write_bytes(text + f'\n{DIGEST} = "{source_digest(text)}"\n'.encode())
        (work / "mypy.ini").write_text(_MYPY_CONFIG)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MYPYPATH": str(ROOT)}
        try:
            done = subprocess.run([sys.executable, "-m", "mypyc", "--config-file", "mypy.ini", f"{name}.py"],
                                  cwd=work, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"mypyc did not run: {exc}"
        built = [p for p in work.glob(f"{name}.*") if p.suffix in (".so", ".pyd")]
        if done.returncode != 0 or not built:
            return f"mypyc failed (exit {done.returncode}): {(done.stdout + done.stderr).strip()[-2000:]}"
        NATIVE_DIR.mkdir(exist_ok=True)
        target = NATIVE_DIR / built[0].name
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(built[0], partial)
        os.replace(partial, target)  # a new file: processes that loaded the old one keep it
        (NATIVE_DIR / f"{name}.sha256").write_text(source_digest(text) + "\n")
    # Loaded once as the service would (whatever BILLING_NATIVE says here); only the loader's
    # own warnings (a stale or unloadable build) refuse it, not a library's deprecations.
    check = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c",
         f"import importlib; from billing import native; m = importlib.import_module({module!r}); "
         "assert native.compiled(m) is not m"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "BILLING_NATIVE"})
    if check.returncode != 0:
        for left in _old_builds(name):
            left.unlink()
        return f"the build does not load: {check.stderr.strip()[-1000:]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a module could not be compiled")
    args = parser.parse_args(argv)
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = list(pool.map(build, args.sources))
    failed = 0
    for source, why in zip(args.sources, failures):
        if why is None:
            print(f"native build: {source} compiled", file=sys.stderr)
        else:
            failed += 1
            print(f"native build: {source} NOT compiled, the pure module serves: {why}", file=sys.stderr)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())

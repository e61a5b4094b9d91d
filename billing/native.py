"""Compiled builds of a few hot pure-Python modules, used only when built from exactly the
source beside them (docs/decisions.md, "Compiled hot paths").

`make install` compiles the modules listed in the Makefile (NATIVE_SOURCES) with mypyc
(`billing/devtools/native_build.py`) into `billing/_native/` (git-ignored), each as a module
of its own name (`consumers.usage_avro` -> `consumers__usage_avro`) that carries the SHA-256
of the source it was built from, also written beside it (`<name>.sha256`) so that a stale
build is refused before any of its code runs. `compiled(module)` returns that build only
when both digests are the digest of `module`'s source file as it is now; otherwise the
module itself (a stale build, with a warning; no build, silently: the build is optional).
The pure module stays the reference: callers take both through the same names, and tests
run both.

`BILLING_NATIVE=0` in the environment: the pure modules everywhere."""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import warnings
from pathlib import Path
from types import ModuleType

NATIVE_DIR = Path(__file__).parent / "_native"
DIGEST = "__source_digest__"


def native_name(module_name: str) -> str:
    """The compiled module's own name: dots become double underscores."""
    return module_name.replace(".", "__")


def source_digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()


def digest_file(module_name: str, native_dir: Path | None = None) -> Path:
    """Where the build of `module_name` says which source it was made from."""
    return (native_dir or NATIVE_DIR) / f"{native_name(module_name)}.sha256"


def build_file(module_name: str, native_dir: Path | None = None) -> Path | None:
    """The compiled build's file for this interpreter, fresh or not (None: not built)."""
    name = native_name(module_name)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (path := (native_dir or NATIVE_DIR) / f"{name}{suffix}").is_file():
            return path
    return None


def compiled(module: ModuleType, native_dir: Path | None = None) -> ModuleType:
    """`module`'s compiled build when there is one built from its current source, else `module`."""
    if os.environ.get("BILLING_NATIVE", "1") == "0" or module.__file__ is None:
        return module
    path = build_file(module.__name__, native_dir)
    if path is None:
        return module
    want = source_digest(Path(module.__file__).read_bytes())
    try:
        made_from = digest_file(module.__name__, native_dir).read_text().strip()
    except OSError:
        made_from = None
    if made_from != want:
        warnings.warn(f"{path} was built from another version of {module.__file__} (run `make install` "
                      "to rebuild it); using the source", RuntimeWarning, stacklevel=2)
        return module
    try:
        spec = importlib.util.spec_from_file_location(native_name(module.__name__), path)
        assert spec is not None and spec.loader is not None
        built = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(built)
    except Exception as exc:  # noqa: BLE001 - any failure to load: the pure module serves
        warnings.warn(f"{path} could not be loaded ({type(exc).__name__}: {exc}); using {module.__file__}",
                      RuntimeWarning, stacklevel=2)
        return module
    if getattr(built, DIGEST, None) != want:
        warnings.warn(f"{path} was built from another version of {module.__file__} (run `make install` "
                      "to rebuild it); using the source", RuntimeWarning, stacklevel=2)
        return module
    return built

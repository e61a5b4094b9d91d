"""The compiled builds of hot modules (billing/native.py): used only when built from exactly
the source beside them; a stale build is refused with a warning, a missing one silently."""
from __future__ import annotations

import importlib.machinery
import shutil
import types
import warnings
from pathlib import Path

import pytest

from billing import native
from consumers import usage_avro


def _fake(tmp_path: Path, source: bytes) -> types.ModuleType:
    """A module named consumers.usage_avro whose source file is `source`."""
    path = tmp_path / "usage_avro.py"
    path.write_bytes(source)
    module = types.ModuleType("consumers.usage_avro")
    module.__file__ = str(path)
    return module


@pytest.fixture
def build(tmp_path) -> Path:
    """A copy of the reader's build, in a directory of its own."""
    found = native.build_file("consumers.usage_avro")
    if found is None:
        pytest.skip("no compiled build of consumers/usage_avro.py (make install builds it when it can)")
    target = tmp_path / "native"
    target.mkdir()
    shutil.copy(found, target / found.name)
    shutil.copy(native.digest_file("consumers.usage_avro"), target)
    return target


def test_no_build_is_the_pure_module(tmp_path):
    assert native.compiled(usage_avro, tmp_path) is usage_avro


def test_a_build_of_the_same_source_is_used(build, tmp_path):
    module = _fake(tmp_path, Path(usage_avro.__file__).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built = native.compiled(module, build)
    assert built is not module
    assert getattr(built, native.DIGEST) == native.source_digest(Path(usage_avro.__file__).read_bytes())
    assert built.decode is not None and built.Strings is not usage_avro.Strings


def test_a_build_of_another_source_is_refused_with_a_warning(build, tmp_path):
    edited = Path(usage_avro.__file__).read_bytes() + b"\n# edited after the build\n"
    module = _fake(tmp_path, edited)
    with pytest.warns(RuntimeWarning, match="built from another version"):
        assert native.compiled(module, build) is module


def _junk_build(directory: Path, made_from: str | None) -> None:
    (directory / f"consumers__usage_avro{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an ELF file")
    if made_from is not None:
        native.digest_file("consumers.usage_avro", directory).write_text(made_from + "\n")


def test_a_build_that_does_not_load_is_refused_with_a_warning(tmp_path):
    _junk_build(tmp_path, native.source_digest(Path(usage_avro.__file__).read_bytes()))
    with pytest.warns(RuntimeWarning, match="could not be loaded"):
        assert native.compiled(usage_avro, tmp_path) is usage_avro


@pytest.mark.parametrize("made_from", [None, "0" * 64])
def test_a_stale_build_is_refused_before_it_is_loaded(tmp_path, made_from):
    # The junk would fail to load: refused as stale means none of it ran.
    _junk_build(tmp_path, made_from)
    with pytest.warns(RuntimeWarning, match="built from another version"):
        assert native.compiled(usage_avro, tmp_path) is usage_avro


def test_billing_native_0_is_the_pure_module(build, monkeypatch):
    monkeypatch.setenv("BILLING_NATIVE", "0")
    assert native.compiled(usage_avro, build) is usage_avro

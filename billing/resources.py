"""Where the files that ship with the code are: the SQL migrations and the schemas.

In the repository they are the top-level directories migrations/ and schemas/; setup.py
installs them as the packages billing._migrations and billing._schemas (in a wheel and in
an editable install alike), so they are found through importlib.resources wherever the
package is installed. An installation must unpack to a file system (pip always does).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _directory(package: str) -> Path:
    found = resources.files(package)
    if not isinstance(found, Path):  # a zip import: the SQL and schemas are read as files
        raise RuntimeError(f"{package} is not on a file system ({found!r}); install the wheel with pip")
    return found


def migrations_dir() -> Path:
    return _directory("billing._migrations")


def schemas_dir() -> Path:
    return _directory("billing._schemas")

"""Every branch of the subscription command union has a handler, and only those."""
from __future__ import annotations

import json
from pathlib import Path

from consumers.commands import HANDLERS

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_dispatch_table_covers_the_command_union():
    schema = json.loads((PROJECT_ROOT / "schemas" / "avro" / "subscription_command.avsc").read_text())
    union = next(f["type"] for f in schema["fields"] if f["name"] == "command")
    assert set(HANDLERS) == {branch["name"] for branch in union}

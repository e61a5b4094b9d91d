"""The CreateSubscription command gained `time_zone` (docs/time.md): a command written with
the previous schema (schemas/avro/history/SubscriptionCommand.1.avsc) still decodes, as UTC."""
from __future__ import annotations

import json

from billing import codec
from billing.codec import Schema
from tests.unit.test_codec import _single_object

CREATE = {"customer_id": "c", "plan_id": "p", "start_at_us": None, "billing_anchor_us": None, "trial_days": None,
          "activate": True, "metadata": {}}
ENVELOPE = {"command_id": "k", "tenant_id": "t", "subscription_id": "", "issued_at_us": 1, "actor": ""}


def test_an_old_create_command_decodes_with_an_empty_time_zone() -> None:
    old = json.loads((codec.HISTORY_DIR / "SubscriptionCommand.1.avsc").read_text())
    data = _single_object(old, {**ENVELOPE, "command": ("billing.v1.CreateSubscription", CREATE)})
    decoded = codec.decode(Schema.SUBSCRIPTION_COMMAND, data)
    name, body = decoded["command"]
    assert name == "billing.v1.CreateSubscription" and body["time_zone"] == ""


def test_a_new_create_command_carries_its_time_zone() -> None:
    record = {**ENVELOPE, "command": ("billing.v1.CreateSubscription", {**CREATE, "time_zone": "Asia/Kathmandu"})}
    name, body = codec.decode(Schema.SUBSCRIPTION_COMMAND, codec.encode(Schema.SUBSCRIPTION_COMMAND, record))["command"]
    assert body["time_zone"] == "Asia/Kathmandu"

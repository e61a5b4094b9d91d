"""What the proto's comments promise matches what the code does: status codes, history
actions and actors, error reasons; and page tokens are bound and tamper-evident."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from billing.domain.events import EventType
from billing.services.errors import ValidationError
from billing.services.paging import PageTokens
from billing.services.history import history_action, history_actor

ROOT = Path(__file__).resolve().parents[2]
PROTO = (ROOT / "schemas/proto/billing/v1/billing.proto").read_text()
HEADER = PROTO.split("syntax =", 1)[0]


def test_the_header_lists_every_status_code_the_service_returns():
    from billing.api.errors import _STATUS

    # Every abort of billing/api, and the table of refusals (not the codes the tracing
    # interceptor merely classifies).
    used = {code.name for _, code in _STATUS}
    for path in (ROOT / "billing/api").glob("*.py"):
        used |= set(re.findall(r"abort(?:_with_status)?\([^)]*?StatusCode\.([A-Z_]+)", path.read_text(), re.S))
    assert {"UNAUTHENTICATED", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL"} <= used  # the pattern finds them
    listed = set(re.findall(r"\b([A-Z]{2,}(?:_[A-Z]+)*)\b", HEADER.split("- Errors:", 1)[1]))
    assert used - {"OK"} <= listed, f"codes returned but not in the proto header: {used - listed}"
    for must in ("ALREADY_EXISTS", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "UNAUTHENTICATED"):
        assert must in listed


def test_every_history_action_is_the_protos():
    comment = PROTO.split("message SubscriptionHistoryEntry", 1)[1].split("string action", 1)[0]
    listed = set(re.findall(r'"([a-z_]+)"', comment))
    actions = {history_action(e.value) for e in EventType if e.value.startswith("subscription.")}
    assert actions == listed


@pytest.mark.parametrize("stored, request_id, api", [
    ("api:0b9a3a52-4c1e-4a57-9f43-2d4f7c1e5a10", "r-1", "api_key:0b9a3a52-4c1e-4a57-9f43-2d4f7c1e5a10"),
    ("api:bk_k6vcwu4", "r-1", "api_key:redacted"),  # an old row: a prefix of the secret key
    ("command:billing.subscription-commands.v1", "cmd:c-42", "command:c-42"),
    ("billing-run:9", "billing-run:9", "system"),
    ("system:scheduler", "auto-resume:x", "system"),
])
def test_stored_actors_read_as_the_proto_says(stored, request_id, api):
    assert history_actor(stored, request_id) == api


AT = datetime(2026, 5, 1, tzinfo=timezone.utc)
TENANT = uuid.uuid4()
ROW = uuid.uuid4()


def test_a_token_decodes_only_for_its_method_filters_tenant_and_key():
    tokens = PageTokens("s3cret")
    token = tokens.encode("ListPlans", TENANT, {"code": ""}, AT, ROW)
    assert tokens.decode(token, "ListPlans", TENANT, {"code": ""}) == (AT, ROW)
    # another replica with the same secret reads it; another secret does not
    assert PageTokens("s3cret").decode(token, "ListPlans", TENANT, {"code": ""}) == (AT, ROW)
    for other in (lambda: PageTokens("other").decode(token, "ListPlans", TENANT, {"code": ""}),
                  lambda: tokens.decode(token, "ListSubscriptions", TENANT, {"code": ""}),
                  lambda: tokens.decode(token, "ListPlans", uuid.uuid4(), {"code": ""}),
                  lambda: tokens.decode(token, "ListPlans", TENANT, {"code": "x"}),
                  lambda: tokens.decode(token.replace(".", "x."), "ListPlans", TENANT, {"code": ""})):
        with pytest.raises(ValidationError) as err:
            other()
        assert err.value.field == "page_token"


def test_every_edit_of_the_last_character_is_refused():
    """base64's last character carries spare bits: several texts decode to the same MAC
    bytes, and each edit must still be refused."""
    tokens = PageTokens("s3cret")
    token = tokens.encode("ListPlans", TENANT, {}, AT, ROW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    edits = [token[:-1] + c for c in alphabet if c != token[-1]]
    for edited in edits:
        with pytest.raises(ValidationError) as err:
            tokens.decode(edited, "ListPlans", TENANT, {})
        assert err.value.field == "page_token"
    assert len(edits) == 63


def test_without_a_secret_each_process_draws_its_own_key():
    a, b = PageTokens(), PageTokens()
    assert not a.shared and PageTokens("x").shared
    token = a.encode("ListPlans", TENANT, {}, AT, ROW)
    with pytest.raises(ValidationError):
        b.decode(token, "ListPlans", TENANT, {})

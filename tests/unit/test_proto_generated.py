"""The gRPC contract: generated code is current, and the API conventions hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from billing.devtools import protogen
from billing.v1 import billing_pb2

EXPECTED_METHODS = {
    "CreatePlan",
    "GetPlan",
    "ListPlans",
    "ArchivePlan",
    "CreateSubscription",
    "GetSubscription",
    "ListSubscriptions",
    "ActivateSubscription",
    "PauseSubscription",
    "ResumeSubscription",
    "CancelSubscription",
    "ChangePlan",
    "RecordUsage",
    "RecordUsageBatch",
    "GetUsage",
    "PreviewInvoice",
    "RunBilling",
    "GetBillingRun",
    "ListBillingRuns",
    "CreateDiscount",
    "ListDiscounts",
    "DeleteDiscount",
    "CreateCreditGrant",
    "ListCreditGrants",
    "VoidCreditGrant",
    "CreateTestClock",
    "GetTestClock",
    "ListTestClocks",
    "AdvanceTestClock",
    "DeleteTestClock",
    "CheckEntitlement",
    "ListEntitlements",
    "CreateThreshold",
    "ListThresholds",
    "DeleteThreshold",
}
MUTATION = re.compile(r"^(Create|Archive|Activate|Pause|Resume|Cancel|Advance|Delete|Void)|^(ChangePlan|RecordUsage|RecordUsageBatch|RunBilling)$")

SERVICE = billing_pb2.DESCRIPTOR.services_by_name["BillingService"]


def test_generated_code_is_current(tmp_path: Path) -> None:
    generated = protogen.generate(tmp_path)
    assert generated, "protogen generated nothing"
    for fresh in generated:
        rel = fresh.relative_to(tmp_path)
        committed = protogen.PROJECT_ROOT / rel
        assert committed.exists(), f"{rel} missing: generated code is stale: run `make proto`"
        assert fresh.read_bytes() == committed.read_bytes(), (
            f"{rel} differs: generated code is stale: run `make proto`"
        )
    assert (protogen.PROJECT_ROOT / "billing" / "v1" / "__init__.py").exists()


def test_service_has_exactly_the_expected_methods() -> None:
    names = [m.name for m in SERVICE.methods]
    assert len(names) == len(set(names)) == len(EXPECTED_METHODS)
    assert set(names) == EXPECTED_METHODS


def test_request_conventions() -> None:
    mutations = [m for m in SERVICE.methods if MUTATION.match(m.name)]
    assert {m.name for m in mutations} == {
        "CreatePlan", "ArchivePlan", "CreateSubscription", "ActivateSubscription",
        "PauseSubscription", "ResumeSubscription", "CancelSubscription", "ChangePlan",
        "RecordUsage", "RecordUsageBatch", "RunBilling", "CreateDiscount", "DeleteDiscount",
        "CreateCreditGrant", "VoidCreditGrant",
        "CreateTestClock", "AdvanceTestClock", "DeleteTestClock",
        "CreateThreshold", "DeleteThreshold",
    }
    for method in SERVICE.methods:
        request = method.input_type
        assert request.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"
        assert "tenant_id" not in request.fields_by_name, f"{request.name} carries tenant_id"
        if method in mutations:
            field = request.fields_by_name.get("request_id")
            assert field is not None, f"{request.name} has no request_id"
            assert field.number == 1 and field.type == FieldDescriptor.TYPE_STRING
        if method.name.startswith("List"):
            assert {"page_size", "page_token"} <= set(request.fields_by_name)
            assert "next_page_token" in method.output_type.fields_by_name


def _all_messages():
    stack = list(billing_pb2.DESCRIPTOR.message_types_by_name.values())
    while stack:
        msg = stack.pop()
        yield msg
        stack.extend(msg.nested_types)


def test_no_floating_point_and_no_tenant_anywhere() -> None:
    for msg in _all_messages():
        for field in msg.fields:
            assert field.type not in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE), (
                f"{msg.name}.{field.name} is floating point; use a decimal string"
            )
            assert field.name != "tenant_id", f"{msg.name}.{field.name}"


@pytest.mark.parametrize("enum", list(billing_pb2.DESCRIPTOR.enum_types_by_name.values()), ids=lambda e: e.name)
def test_enums_start_with_prefixed_unspecified(enum) -> None:
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    assert enum.values[0].number == 0
    assert enum.values[0].name == f"{prefix}UNSPECIFIED"
    for value in enum.values:
        assert value.name.startswith(prefix), value.name

"""Avro schemas and the single-object codec (billing.codec)."""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import codec
from billing.codec import (
    CodecError,
    MalformedMessageError,
    Schema,
    UnknownSchemaError,
    content_type,
    decode,
    decode_any,
    decode_many,
    encode,
    fingerprint,
    register_history_schema,
)

TENANT = "6f1c2a0e-3b7d-4c55-9a8e-2f4d1c0b9e77"
T0 = 1_732_406_400_000_000  # 2024-11-24T00:00:00Z in microseconds
DAY = 86_400_000_000


def usage_event(i: int = 1, **over) -> dict:
    rec = {
        "event_id": f"evt-{i:012d}",
        "tenant_id": TENANT,
        "subscription_id": "sub_01HF3KX9",
        "metric_code": "api_calls",
        "quantity": "12.5",
        "occurred_at_us": T0 + i,
        "properties": {"region": "eu-west-1", "endpoint": "/v1/charges"},
    }
    rec.update(over)
    return rec


def command(name: str, body: dict, **over) -> dict:
    rec = {
        "command_id": f"cmd-{name}",
        "tenant_id": TENANT,
        "subscription_id": "sub_01HF3KX9",
        "issued_at_us": T0,
        "actor": "ops@example.com",
        "command": (f"billing.v1.{name}", body),
    }
    rec.update(over)
    return rec


COMMANDS = [
    command(
        "CreateSubscription",
        {
            "customer_id": "cus_42",
            "plan_id": "pro-monthly",
            "start_at_us": T0,
            "billing_anchor_us": T0 + DAY,
            "trial_days": 14,
            "activate": True,
            "metadata": {"crm_id": "A-17"},
            "time_zone": "Europe/Dublin",
        },
        subscription_id="",
    ),
    command(
        "CreateSubscription",
        {
            "customer_id": "cus_43",
            "plan_id": "basic",
            "start_at_us": None,
            "billing_anchor_us": None,
            "trial_days": None,
            "activate": False,
            "metadata": {},
            "time_zone": "",
        },
        subscription_id="",
        actor="",
    ),
    command("ActivateSubscription", {}),
    command("PauseSubscription", {"resumes_at_us": T0 + 30 * DAY}),
    command("PauseSubscription", {"resumes_at_us": None}),
    command("ResumeSubscription", {}),
    command("CancelSubscription", {"mode": "IMMEDIATELY", "proration": "create_prorations"}),
    command("CancelSubscription", {"mode": "AT_PERIOD_END", "proration": ""}),
    command("ChangePlan", {"new_plan_id": "enterprise", "timing": "DEFAULT", "proration_behavior": ""}),
    command("ChangePlan", {"new_plan_id": "basic", "timing": "AT_PERIOD_END", "proration_behavior": "none"}),
    command("ChangePlan", {"new_plan_id": "pro", "timing": "IMMEDIATELY", "proration_behavior": "always_invoice"}),
    command("CreateCreditGrant", {"amount": "25.00", "currency": "EUR", "customer_id": "cus_42", "priority": 2,
                                  "effective_at_us": T0, "expires_at_us": T0 + 90 * DAY,
                                  "grant_id": "0b7e1c52-2f3b-4c64-9a7e-0c1d3f6a8e21", "description": "promo"},
            subscription_id=""),
]

SUBSCRIPTION_EVENTS = [
    {
        "event_id": "sev-5d0c1e9f",
        "tenant_id": TENANT,
        "subscription_id": "sub_01HF3KX9",
        "customer_id": "cus_42",
        "type": "subscription.paused",
        "occurred_at_us": T0,
        "from_status": "active",
        "to_status": "paused",
        "command_id": "cmd-PauseSubscription",
        "request_id": None,
        "reason": None,
        "data": {"resumes_at_us": str(T0 + 30 * DAY)},
    },
    {
        "event_id": "sev-77aa",
        "tenant_id": TENANT,
        "subscription_id": "sub_01HF3KX9",
        "customer_id": "cus_42",
        "type": "command.rejected",
        "occurred_at_us": T0,
        "from_status": None,
        "to_status": None,
        "command_id": None,
        "request_id": "req-9",
        "reason": "FAILED_PRECONDITION: cannot pause a canceled subscription",
        "data": {},
    },
]

BILLING_RUN = {
    "run_id": "run-2024-11",
    "tenant_id": TENANT,
    "as_of_us": T0,
    "shard": 3,
    "shard_count": 8,
    "requested_at_us": T0 + 5,
}


def _line(kind: str, amount: str, **over) -> dict:
    line = {
        "kind": kind,
        "description": f"{kind} line",
        "metric_code": None,
        "quantity": "1",
        "unit_price": amount,
        "amount": amount,
        "period_start_us": T0 - 30 * DAY,
        "period_end_us": T0,
        "fraction": None,
        "original_period_start_us": None,
    }
    line.update(over)
    return line


INVOICE_REQUEST = {
    "invoice_request_id": "inv-sub_01HF3KX9-20241024",
    "tenant_id": TENANT,
    "customer_id": "cus_42",
    "subscription_id": "sub_01HF3KX9",
    "run_id": "run-2024-11",
    "currency": "EUR",
    "period_start_us": T0 - 30 * DAY,
    "period_end_us": T0,
    "issued_at_us": T0 + 1,
    "lines": [
        _line("base_fee", "49.00"),
        _line("usage", "12.35", metric_code="api_calls", quantity="1235", unit_price="0.01"),
        _line(
            "late_usage",
            "0.50",
            metric_code="api_calls",
            quantity="50",
            unit_price="0.01",
            original_period_start_us=T0 - 61 * DAY,
        ),
        _line("proration_credit", "-23.71", quantity="1", unit_price="-49.00", fraction="15/31"),
        _line("proration_charge", "48.39", quantity="1", unit_price="100.00", fraction="15/31"),
    ],
    "subtotal": "86.53",
    "total": "86.53",
    "metadata": {"po_number": "PO-1"},
    "test_clock_id": None,
    "reason": "period",
    "threshold_id": None,
}

SAMPLES: list[tuple[Schema, dict]] = (
    [(Schema.USAGE_EVENT, usage_event()), (Schema.USAGE_EVENT, usage_event(2, properties={}))]
    + [(Schema.SUBSCRIPTION_COMMAND, c) for c in COMMANDS]
    + [(Schema.SUBSCRIPTION_EVENT, e) for e in SUBSCRIPTION_EVENTS]
    + [(Schema.BILLING_RUN_REQUEST, BILLING_RUN), (Schema.INVOICE_REQUEST, INVOICE_REQUEST),
       (Schema.INVOICE_REQUEST, {**INVOICE_REQUEST, "test_clock_id": "5b0c7f4e-8a1d-4a53-9b62-0f3c1d2e4a77"}),
       (Schema.INVOICE_REQUEST, {**INVOICE_REQUEST, "reason": "threshold",
                                 "threshold_id": "0e5f2a61-3c4d-4b7e-8f90-1a2b3c4d5e6f"})]
)


@pytest.fixture
def isolated_registry(monkeypatch):
    """History registrations made by a test do not leak into other tests."""
    monkeypatch.setattr(codec, "_WRITERS", dict(codec._WRITERS))


def _raw_schema(schema: Schema) -> dict:
    return json.loads((codec.SCHEMA_DIR / codec._FILES[schema]).read_text())


def _single_object(raw_schema: dict, record: dict) -> bytes:
    """Encode with an arbitrary (e.g. old) writer schema, straight with fastavro."""
    fp = bytes.fromhex(
        fastavro.schema.fingerprint(to_parsing_canonical_form(raw_schema), "CRC-64-AVRO")
    )
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(raw_schema), record)
    return b"\xc3\x01" + fp + buf.getvalue()


# ------------------------------------------------------------------------- the schemas


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("schema", list(Schema))
def test_schema_files_are_documented_plain_and_namespaced(schema):
    raw = _raw_schema(schema)
    assert raw["type"] == "record" and raw["name"] == schema.value
    assert raw["namespace"] == "billing.v1" and raw.get("doc")
    fields = 0
    for path, node in _walk(raw):
        # Times only, for other readers (docs/kafka.md); the codec parses without them (hot path).
        if "logicalType" in node:
            assert node == {"type": "long", "logicalType": "timestamp-micros"}, path
        if node.get("type") == "record":
            for field in node["fields"]:
                fields += 1
                assert field.get("doc"), f"{path}.{field['name']} has no doc"
    assert fields >= 6
    parsed = codec._CURRENT[schema].parsed
    assert all("logicalType" not in node for _, node in _walk(parsed)), "no logical types on the hot path"


def test_history_folder_exists_with_readme():
    assert (codec.HISTORY_DIR / "README.md").is_file()


def _crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO exactly as in the Avro specification, little-endian."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


@pytest.mark.parametrize("schema", list(Schema))
def test_fingerprint_and_header_follow_the_spec(schema):
    canonical = to_parsing_canonical_form(_raw_schema(schema))
    assert fingerprint(schema) == _crc64_avro(canonical.encode())
    assert len(fingerprint(schema)) == 8
    assert content_type(schema) == f"application/vnd.apache.avro+binary; schema=billing.v1.{schema.value}"


def test_spec_reference_fingerprint():
    assert _crc64_avro(b'"int"').hex() == fastavro.schema.fingerprint('"int"', "CRC-64-AVRO")


def test_fingerprints_are_distinct():
    assert len({fingerprint(s) for s in Schema}) == len(Schema)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("schema,record", SAMPLES, ids=lambda v: getattr(v, "value", None) or "")
def test_round_trip(schema, record):
    data = encode(schema, record)
    assert data[:2] == b"\xc3\x01" and data[2:10] == fingerprint(schema)
    assert decode(schema, data) == record
    assert decode(schema.value, data) == record  # plain strings work too
    assert decode_any(data) == (schema, record)
    assert decode(schema, bytearray(data)) == record
    assert decode(schema, memoryview(data)) == record


def test_every_command_branch_is_covered():
    field = next(f for f in _raw_schema(Schema.SUBSCRIPTION_COMMAND)["fields"] if f["name"] == "command")
    branches = {f"billing.v1.{b['name']}" for b in field["type"]}
    assert branches == {c["command"][0] for c in COMMANDS}


def test_defaults_fill_omitted_fields():
    rec = usage_event()
    del rec["properties"]
    assert decode(Schema.USAGE_EVENT, encode(Schema.USAGE_EVENT, rec))["properties"] == {}
    run = {k: v for k, v in BILLING_RUN.items() if k not in ("shard", "shard_count")}
    out = decode(Schema.BILLING_RUN_REQUEST, encode(Schema.BILLING_RUN_REQUEST, run))
    assert (out["shard"], out["shard_count"]) == (0, 1)
    cmd = command("ChangePlan", {"new_plan_id": "x"})
    del cmd["actor"]
    out = decode(Schema.SUBSCRIPTION_COMMAND, encode(Schema.SUBSCRIPTION_COMMAND, cmd))
    assert out["actor"] == ""
    assert out["command"] == (
        "billing.v1.ChangePlan",
        {"new_plan_id": "x", "timing": "DEFAULT", "proration_behavior": ""},
    )


def test_empty_command_records_keep_their_identity():
    for name in ("ActivateSubscription", "ResumeSubscription"):
        out = decode(Schema.SUBSCRIPTION_COMMAND, encode(Schema.SUBSCRIPTION_COMMAND, command(name, {})))
        assert out["command"] == (f"billing.v1.{name}", {})


# ------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    "schema,record",
    [
        (Schema.USAGE_EVENT, {k: v for k, v in usage_event().items() if k != "event_id"}),
        (Schema.USAGE_EVENT, usage_event(occurred_at_us="yesterday")),
        (Schema.SUBSCRIPTION_COMMAND, {**COMMANDS[2], "command": {}}),  # unnamed branch
        (Schema.SUBSCRIPTION_COMMAND, {**COMMANDS[2], "command": ("Activate", {})}),
        (Schema.SUBSCRIPTION_COMMAND, {k: v for k, v in COMMANDS[2].items() if k != "command"}),
        (Schema.SUBSCRIPTION_COMMAND, command("CancelSubscription", {"mode": "LATER"})),
        ("NoSuchRecord", usage_event()),
    ],
)
def test_encode_refuses_records_that_do_not_fit(schema, record):
    with pytest.raises(CodecError):
        encode(schema, record)


# ------------------------------------------------------------------------- decode errors


def test_unknown_fingerprint_is_refused_with_a_clear_error():
    data = bytearray(encode(Schema.USAGE_EVENT, usage_event()))
    data[2:10] = bytes.fromhex("0011223344556677")
    with pytest.raises(UnknownSchemaError) as err:
        decode(Schema.USAGE_EVENT, bytes(data))
    message = str(err.value)
    assert "0011223344556677" in message
    assert "unknown writer schema fingerprint" in message
    for schema in Schema:  # names what the reader does know
        assert schema.full_name in message
        assert fingerprint(schema).hex() in message
    assert err.value.fingerprint == bytes.fromhex("0011223344556677")
    with pytest.raises(UnknownSchemaError):
        decode_any(bytes(data))


def test_wrong_record_type_is_refused():
    data = encode(Schema.SUBSCRIPTION_EVENT, SUBSCRIPTION_EVENTS[0])
    with pytest.raises(MalformedMessageError, match=r"SubscriptionEvent.*expected billing\.v1\.UsageEvent"):
        decode(Schema.USAGE_EVENT, data)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (None, "tombstone"),
        ("not bytes", "bytes"),
        (b"\xc3", "truncated"),
        (b"\xc3\x01\x00\x01", "truncated"),
        (b'{"event_id": "e1"}', "marker"),
        (b"\x00\x00\x00\x00\x01" + b"\x00" * 20, "BILLING_SCHEMA_REGISTRY_URL"),  # Confluent, no registry
    ],
)
def test_bad_headers(data, match):
    with pytest.raises(MalformedMessageError, match=match):
        decode(Schema.USAGE_EVENT, data)
    with pytest.raises(MalformedMessageError):
        decode_any(data)


def test_truncated_payloads_and_trailing_bytes():
    for schema, record in SAMPLES:
        data = encode(schema, record)
        for cut in range(10, len(data)):
            with pytest.raises(MalformedMessageError):
                decode(schema, data[:cut])
        with pytest.raises(MalformedMessageError, match="trailing"):
            decode(schema, data + b"\x00")


def _only_codec_errors(schema, data):
    """Bad input either decodes to a record or raises a CodecError; nothing else escapes."""
    try:
        assert isinstance(decode(schema, data), dict)
    except CodecError:
        pass
    try:
        found, record = decode_any(data)
        assert isinstance(found, Schema) and isinstance(record, dict)
    except CodecError:
        pass
    errors = []
    records = decode_many(schema, [data], on_error=lambda i, e: errors.append(e))
    assert len(records) + len(errors) == 1 and all(isinstance(e, CodecError) for e in errors)
    return True


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(schema=st.sampled_from(list(Schema)), data=st.binary(max_size=200))
def test_random_bytes_raise_only_codec_errors(schema, data):
    assert _only_codec_errors(schema, data)


@_FUZZ
@given(schema=st.sampled_from(list(Schema)), payload=st.binary(max_size=300))
def test_random_payload_after_valid_header_raises_only_codec_errors(schema, payload):
    assert _only_codec_errors(schema, b"\xc3\x01" + fingerprint(schema) + payload)


@_FUZZ
@given(
    sample=st.sampled_from(SAMPLES),
    cut=st.integers(min_value=0, max_value=2000),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
)
def test_truncated_or_corrupted_messages_raise_only_codec_errors(sample, cut, flips):
    schema, record = sample
    data = bytearray(encode(schema, record))
    for pos, value in flips:
        data[pos % len(data)] = value
    assert _only_codec_errors(schema, bytes(data[: cut % (len(data) + 1)]))


# -------------------------------------------------------------------------- evolution


def _old_usage_event_schema() -> dict:
    old = _raw_schema(Schema.USAGE_EVENT)
    old["fields"] = [f for f in old["fields"] if f["name"] != "properties"]
    return old


def test_old_writer_schema_resolves_to_current_reader(isolated_registry):
    old = _old_usage_event_schema()
    rec = {k: v for k, v in usage_event().items() if k != "properties"}
    data = _single_object(old, rec)
    with pytest.raises(UnknownSchemaError):  # not known until registered
        decode(Schema.USAGE_EVENT, data)
    fp = register_history_schema(old)
    assert data[2:10] == fp != fingerprint(Schema.USAGE_EVENT)
    assert register_history_schema(old) == fp  # idempotent
    assert decode(Schema.USAGE_EVENT, data) == {**rec, "properties": {}}
    assert decode_any(data) == (Schema.USAGE_EVENT, {**rec, "properties": {}})
    # a batch mixing old and current versions
    new = encode(Schema.USAGE_EVENT, usage_event(2))
    assert decode_many(Schema.USAGE_EVENT, [new, data, new]) == [
        usage_event(2),
        {**rec, "properties": {}},
        usage_event(2),
    ]
    with pytest.raises(MalformedMessageError):
        decode(Schema.SUBSCRIPTION_EVENT, data)


def test_invoice_request_before_test_clocks_reads_as_real_time():
    # InvoiceRequest.1 (schemas/avro/history) has no test_clock_id: it reads as null.
    old = json.loads((codec.HISTORY_DIR / "InvoiceRequest.1.avsc").read_text())
    rec = {k: v for k, v in INVOICE_REQUEST.items() if k not in ("test_clock_id", "reason", "threshold_id")}
    assert decode(Schema.INVOICE_REQUEST, _single_object(old, rec)) == {
        **rec, "test_clock_id": None, "reason": None, "threshold_id": None}


def test_invoice_request_before_reasons_reads_without_one():
    # InvoiceRequest.2 (schemas/avro/history) has no reason nor threshold_id: both read as null.
    old = json.loads((codec.HISTORY_DIR / "InvoiceRequest.2.avsc").read_text())
    rec = {k: v for k, v in INVOICE_REQUEST.items() if k not in ("reason", "threshold_id")}
    assert decode(Schema.INVOICE_REQUEST, _single_object(old, rec)) == {**rec, "reason": None, "threshold_id": None}


@pytest.mark.parametrize("old_name,schema,record", [
    ("InvoiceRequest.2.avsc", Schema.INVOICE_REQUEST,
     {**INVOICE_REQUEST, "reason": "threshold", "threshold_id": "0e5f2a61-3c4d-4b7e-8f90-1a2b3c4d5e6f"}),
    ("UsageAlert.1.avsc", Schema.USAGE_ALERT,
     {"alert_id": "a", "type": "usage.threshold_crossed", "tenant_id": "t", "subscription_id": "s",
      "threshold_id": "h", "metric_code": "", "threshold_value": "10", "quantity": "12.50", "recurring": True,
      "period_start_us": 1, "period_end_us": 2, "crossed_at_us": 3, "measure": "amount", "currency": "EUR",
      "invoice_request_id": "r"}),
])
def test_an_old_reader_reads_a_new_message(old_name, schema, record):
    # Forward compatibility: a reader still on the previous version skips the new fields.
    old = json.loads((codec.HISTORY_DIR / old_name).read_text())
    data = encode(schema, record)[10:]  # the Avro body, after the single-object header
    new = json.loads(codec.schema_json(schema))
    read = fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(codec._strip_logical(new)),
                                      fastavro.parse_schema(codec._strip_logical(old)))
    known = {f["name"] for f in old["fields"]}
    assert known < set(record) and read == {k: v for k, v in record.items() if k in known}


def test_usage_alert_before_amount_thresholds_reads_as_a_quantity_alert():
    # UsageAlert.1 (schemas/avro/history): no measure, currency, invoice_request_id.
    old = json.loads((codec.HISTORY_DIR / "UsageAlert.1.avsc").read_text())
    rec = {"alert_id": "a", "type": "usage.threshold_crossed", "tenant_id": "t", "subscription_id": "s",
           "threshold_id": "h", "metric_code": "calls", "threshold_value": "10", "quantity": "12", "recurring": True,
           "period_start_us": 1, "period_end_us": 2, "crossed_at_us": 3}
    assert decode(Schema.USAGE_ALERT, _single_object(old, rec)) == {
        **rec, "measure": "quantity", "currency": None, "invoice_request_id": None}


def test_history_file_is_registered_by_path(isolated_registry, tmp_path: Path):
    # An older SubscriptionCommand: no actor yet, and no ChangePlan command yet.
    old = _raw_schema(Schema.SUBSCRIPTION_COMMAND)
    old["fields"] = [f for f in old["fields"] if f["name"] != "actor"]
    union = next(f for f in old["fields"] if f["name"] == "command")["type"]
    union[:] = [b for b in union if b["name"] != "ChangePlan"]
    path = tmp_path / "SubscriptionCommand.1.avsc"
    path.write_text(json.dumps(old))
    register_history_schema(path)
    rec = {k: v for k, v in COMMANDS[3].items() if k != "actor"}
    out = decode(Schema.SUBSCRIPTION_COMMAND, _single_object(old, rec))
    assert out == {**rec, "actor": ""}


def test_a_command_written_before_credit_grants_still_decodes():
    """schemas/avro/history/SubscriptionCommand.1.avsc: the union before CreateCreditGrant."""
    old = json.loads((codec.HISTORY_DIR / "SubscriptionCommand.1.avsc").read_text())
    assert "CreateCreditGrant" not in {b["name"] for b in next(f for f in old["fields"]
                                                               if f["name"] == "command")["type"]}
    rec = next(c for c in COMMANDS if c["command"][0] == "billing.v1.ChangePlan")
    assert decode(Schema.SUBSCRIPTION_COMMAND, _single_object(old, rec)) == rec


def test_enum_symbol_unknown_to_the_reader_falls_back_to_its_default(isolated_registry):
    newer = _raw_schema(Schema.SUBSCRIPTION_COMMAND)
    union = next(f for f in newer["fields"] if f["name"] == "command")["type"]
    change = next(b for b in union if b["name"] == "ChangePlan")
    timing = next(f for f in change["fields"] if f["name"] == "timing")["type"]
    timing["symbols"].append("AT_NEXT_ANCHOR")
    register_history_schema(newer)
    rec = command("ChangePlan", {"new_plan_id": "pro", "timing": "AT_NEXT_ANCHOR", "proration_behavior": ""})
    out = decode(Schema.SUBSCRIPTION_COMMAND, _single_object(newer, rec))
    assert out["command"][1]["timing"] == "DEFAULT"


def test_unresolvable_writer_schema_is_malformed_not_a_crash(isolated_registry):
    newer = _raw_schema(Schema.SUBSCRIPTION_COMMAND)
    union = next(f for f in newer["fields"] if f["name"] == "command")["type"]
    union.append({"type": "record", "name": "RenewNow", "doc": "d", "fields": []})
    register_history_schema(newer)
    data = _single_object(newer, command("RenewNow", {}))
    with pytest.raises(MalformedMessageError, match="SubscriptionCommand"):
        decode(Schema.SUBSCRIPTION_COMMAND, data)


def test_register_refuses_foreign_schemas():
    with pytest.raises(CodecError):
        register_history_schema({"type": "record", "name": "Other", "namespace": "x", "fields": []})
    with pytest.raises(CodecError):
        register_history_schema({"type": "string"})
    with pytest.raises(CodecError):
        register_history_schema("/nonexistent/UsageEvent.1.avsc")


# ---------------------------------------------------------------------------- batches


def test_decode_many_reports_bad_messages_by_index():
    good = [encode(Schema.USAGE_EVENT, usage_event(i)) for i in range(5)]
    batch = [good[0], b"garbage", good[1], encode(Schema.BILLING_RUN_REQUEST, BILLING_RUN), good[2]]
    with pytest.raises(MalformedMessageError) as err:
        decode_many(Schema.USAGE_EVENT, batch)
    assert err.value.index == 1
    bad: list[tuple[int, CodecError]] = []
    out = decode_many(Schema.USAGE_EVENT, batch, on_error=lambda i, e: bad.append((i, e)))
    assert out == [usage_event(0), usage_event(1), usage_event(2)]
    assert [i for i, _ in bad] == [1, 3]
    assert all(isinstance(e, MalformedMessageError) for _, e in bad)
    assert decode_many(Schema.USAGE_EVENT, []) == []


def test_decode_ten_thousand_usage_events():
    messages = [encode(Schema.USAGE_EVENT, usage_event(i)) for i in range(10_000)]
    started = time.perf_counter()
    records = decode_many(Schema.USAGE_EVENT, messages)
    elapsed = time.perf_counter() - started
    assert len(records) == 10_000
    assert records[-1] == usage_event(9_999)
    assert [decode(Schema.USAGE_EVENT, m) for m in messages[:100]] == records[:100]
    print(f"decode_many: {10_000 / elapsed:,.0f} usage events/s")


def test_samples_are_not_mutated_by_encode():
    before = copy.deepcopy(SAMPLES)
    for schema, record in SAMPLES:
        encode(schema, record)
    assert SAMPLES == before

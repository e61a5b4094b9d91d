"""Pure pieces of billing.ops: trace context in carriers, log redaction and fields, label bounds."""
from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from billing.ops import tracing
from billing.ops.logging import JsonFormatter, current_tenant, redact
from billing.ops.metrics import reason_label

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_sdk_tracer = TracerProvider().get_tracer("test")  # recording spans, without touching the global provider


def test_extract_reads_kafka_headers_and_grpc_metadata():
    for carrier in ({"traceparent": TRACEPARENT.encode(), "content-type": b"x"},
                    (("authorization", "Bearer x"), ("traceparent", TRACEPARENT))):
        ctx = tracing.extract(carrier)
        span_context = tracing.trace.get_current_span(ctx).get_span_context()
        assert format(span_context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
        assert format(span_context.span_id, "016x") == "b7ad6b7169203331"


def test_extract_refuses_what_is_no_trace_context():
    for carrier in (None, {}, {"content-type": b"x"}, {"traceparent": b"garbage"},
                    {"traceparent": b"00-00000000000000000000000000000000-b7ad6b7169203331-01"}):
        assert tracing.extract(carrier) is None


def test_inject_replaces_trace_headers_and_writes_nothing_outside_a_span():
    assert tracing.inject({"traceparent": "old", "k": "v"}) == {"k": "v"}
    with _sdk_tracer.start_as_current_span("s") as span:
        headers = tracing.inject({"traceparent": "old", "k": "v"})
    assert headers["k"] == "v"
    assert headers["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    assert tracing.kafka_headers(tracing.extract({"traceparent": TRACEPARENT})) == [("traceparent", TRACEPARENT.encode())]


def test_redact_masks_keys_and_bearer_tokens():
    key = "bk_" + "A1b2_C3-d4" * 4
    text = redact(f"key={key} header='authorization: Bearer {key}' other=bk_short")
    assert key not in text and "bk_[redacted]" in text and "Bearer [redacted]" in text
    assert "bk_short" in redact("bk_short")  # too short to be a key: left alone
    assert redact("nothing here") == "nothing here"


def _format(msg, *args, **extra) -> dict:
    record = logging.makeLogRecord({"msg": msg, "args": args, "levelname": "INFO", "levelno": 20, "name": "t",
                                    **extra})
    return json.loads(JsonFormatter().format(record))


def test_json_lines_carry_tenant_trace_and_span_and_never_a_key():
    assert set(_format("plain")) == {"ts", "level", "logger", "msg"}
    token = current_tenant.set("7d1c0b4e-0000-4000-8000-000000000001")
    try:
        with _sdk_tracer.start_as_current_span("s") as span:
            line = _format("called with %s", "bk_" + "x" * 43, method="GetPlan")
    finally:
        current_tenant.reset(token)
    assert line["tenant_id"] == "7d1c0b4e-0000-4000-8000-000000000001"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert line["method"] == "GetPlan" and line["msg"] == "called with bk_[redacted]"


def test_dead_letter_reasons_are_bounded_labels():
    assert reason_label("unknown_tenant") == "unknown_tenant"
    for free_text in ("tenant 7d1c0b4e does not exist", "X" * 100, "", "Undecodable"):
        assert reason_label(free_text) == "other"
    from consumers.billing import REASONS

    assert [reason_label(r) for r in REASONS] == list(REASONS)  # the billing consumer's codes, kept as they are


def test_every_consumed_topic_has_a_dlq_that_is_created_and_checked():
    from billing.config import Topics

    t = Topics()
    for source, dlq in ((t.usage, t.usage_dlq), (t.subscription_commands, t.subscription_commands_dlq),
                        (t.billing_runs, t.billing_runs_dlq)):
        assert dlq == source.removesuffix(".v1") + ".dlq.v1"
        assert dlq in t.all()  # ensure_topics creates and readiness requires every name in all()

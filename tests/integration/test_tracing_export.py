"""Spans leave the process over OTLP (gRPC or HTTP) when an endpoint is configured, and not otherwise.

Small OTLP receivers (the opentelemetry-proto TraceService over gRPC, and POST /v1/traces
over HTTP in aiohttp) run in this test; a fresh
Python process configures tracing from the environment as `billing serve` does, makes a
span and exits. No PostgreSQL or Kafka needed.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from billing.devstack import free_port

_CHILD = """
from billing.config import Settings
from billing.ops import tracing
provider = tracing.configure(Settings())
with tracing.tracer.start_as_current_span("exported span") as span:
    span.set_attribute("billing.test", "yes")
tracing.shutdown()
print("processors:", [type(p).__name__ for p in provider._active_span_processor._span_processors])
"""


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.requests: list = []
        self.received = threading.Event()

    def Export(self, request, context):
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector():
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    sink = _Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield sink, port
    server.stop(0)


def _child(env_extra: dict) -> str:
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "BILLING_OTLP", "BILLING_OTEL", "BILLING_TRACE"))}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("variable", ["BILLING_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"])
def test_spans_are_exported_when_an_endpoint_is_set(collector, variable):
    sink, port = collector
    out = _child({variable: f"http://127.0.0.1:{port}", "BILLING_OTEL_SERVICE_NAME": "billing-export-test"})
    assert "BatchSpanProcessor" in out
    assert sink.received.wait(10)
    resource_spans = [rs for r in sink.requests for rs in r.resource_spans]
    service = {a.key: a.value.string_value for a in resource_spans[0].resource.attributes}["service.name"]
    names = [s.name for rs in resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert service == "billing-export-test" and names == ["exported span"]


def test_nothing_is_exported_by_default(collector):
    sink, _ = collector
    assert "processors: []" in _child({})
    assert not sink.received.wait(1)


@pytest.fixture
def http_collector():
    """An OTLP/HTTP receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""
    import asyncio

    from aiohttp import web

    sink = _Collector()
    port = free_port()
    loop = asyncio.new_event_loop()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        sink.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read()), None)
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield sink, port
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_spans_reach_an_otlp_http_endpoint_configured_by_otel_variables(http_collector):
    sink, port = http_collector
    out = _child({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                  "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "billing-otel-name",
                  "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"})
    assert "BatchSpanProcessor" in out
    assert sink.received.wait(10)
    resource_spans = [rs for r in sink.requests for rs in r.resource_spans]
    attrs = {a.key: a.value.string_value for a in resource_spans[0].resource.attributes}
    assert attrs["service.name"] == "billing-otel-name" and attrs["deployment.environment"] == "test"
    assert [s.name for rs in resource_spans for ss in rs.scope_spans for s in ss.spans] == ["exported span"]


def test_otel_sampler_applies_and_an_explicit_billing_ratio_wins(collector):
    sink, port = collector
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_TRACES_SAMPLER": "always_off"}
    _child(base)
    assert not sink.received.wait(1)  # always_off: nothing sampled, nothing sent
    _child({**base, "BILLING_TRACE_SAMPLE_RATIO": "1.0"})
    assert sink.received.wait(10)

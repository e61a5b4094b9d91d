"""Prometheus metrics. Label sets are bounded: method and code, never tenant or ids."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

GRPC_REQUESTS = Counter(
    "billing_grpc_requests_total", "gRPC requests handled, by method and status code", ["method", "code"]
)
GRPC_LATENCY = Histogram(
    "billing_grpc_request_duration_seconds", "gRPC request latency, by method", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READY = Gauge("billing_ready", "1 when PostgreSQL, Kafka and migrations are all ready", [])
DEPENDENCY_UP = Gauge("billing_dependency_up", "1 when the dependency answered the last check", ["dependency"])

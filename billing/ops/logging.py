"""Structured JSON logs on stderr, one object per line, with the tenant when there is one.

Every line written inside a span carries `trace_id` and `span_id` (hex, as trace backends
show them), so a log line leads to its trace and back. Secrets never reach the output: the
service logs no API key and no call metadata, and as a second line of defence the formatter
masks anything shaped like one (`bk_...`, `Bearer ...`) in the message, the extras and
exception text.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

from opentelemetry import trace

# Defined below the store (each tenant transaction sets it); used from here by the rest.
from billing.telemetry import current_tenant


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# API keys are "bk_" + 43 URL-safe characters (billing.services.tenants); bearer tokens of any shape.
_SECRET = re.compile(r"\bbk_[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+[A-Za-z0-9_\-.~+/=]+")


def redact(text: str) -> str:
    return _SECRET.sub(_mask, text)


def _mask(match: re.Match) -> str:
    found = match.group(0)
    return "bk_[redacted]" if found.startswith("bk_") else "Bearer [redacted]"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        tenant = current_tenant.get()
        if tenant:
            out["tenant_id"] = tenant
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = format(span.trace_id, "032x")
            out["span_id"] = format(span.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = json.dumps(out, default=str)
        # Masked on the encoded line, so a secret inside any field (nested too) is caught.
        return redact(line) if ("bk_" in line or "earer" in line or "EARER" in line) else line


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""Structured JSON logs on stderr, one object per line, with the tenant when there is one."""
from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone

# Set by the gRPC auth interceptor and the consumers for the duration of one unit of work.
current_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_tenant", default=None)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


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
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

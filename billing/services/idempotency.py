"""Replays of a request_id return the first outcome and change nothing.

The key row is inserted first, inside the use case's transaction: a concurrent request
with the same key blocks on that insert until the first one commits (then sees its
outcome) or rolls back (then goes ahead itself). A refused request rolls back, so it
leaves no key behind and can be retried. `billing maintenance` deletes keys older than
BILLING_IDEMPOTENCY_RETENTION_DAYS; a replay after that is a new request (docs/api.md).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import asyncpg
import orjson

from billing.services.context import Caller
from billing.services.errors import IdempotencyConflict, ValidationError
from billing.store import idempotency as store

MAX_KEY_LENGTH = 255


def check_key(key: str, field: str = "request_id") -> str:
    if not key:
        raise ValidationError(field, "is required for every change")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationError(field, f"must be 1..{MAX_KEY_LENGTH} printable characters")
    return key


def digest(operation: str, payload: Any) -> bytes:
    """What a replay must match: the operation and its request, hashed."""
    return _digest(operation, payload)


def _digest(operation: str, payload: Any) -> bytes:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{operation}\n{body}".encode()).digest()


def digest_of_texts(operation: str, payload: Any) -> bytes:
    """`digest`, for a payload of dicts, lists, strings and None only (a RecordUsageBatch's
    thousand events): orjson writes it several times faster, and its text is json.dumps's
    byte for byte when it holds no escape, no DEL and nothing outside ASCII (json.dumps
    writes those as \\u escapes; tests/unit/test_idempotency_digest.py). Anything else is
    written by json.dumps, so a replay always matches its first request's digest."""
    try:
        body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _digest(operation, payload)
    if not body.isascii() or b"\\" in body or b"\x7f" in body:
        return _digest(operation, payload)
    return hashlib.sha256(operation.encode() + b"\n" + body).digest()


async def claim(conn: asyncpg.Connection, caller: Caller, key: str, operation: str, payload: Any,
                digest: bytes | None = None) -> dict | None:
    """Claim the key for this request; return the stored outcome if it was done before.
    `digest`: the request's, computed already (`payload` is then not read)."""
    digest = digest if digest is not None else _digest(operation, payload)
    row = None
    # A key the retention deletes between the insert and the read (docs/api.md) is gone:
    # the request claims it anew. Twice is a key deleted right as it was replayed.
    for _ in range(2):
        if await store.insert_key(conn, caller.tenant_id, key, operation, digest):
            return None
        row = await store.get_key(conn, caller.tenant_id, key)
        if row is not None:
            break
    if row is None:
        raise RuntimeError(f"idempotency key {key!r} neither inserted nor found")
    if row["operation"] != operation or bytes(row["request_hash"]) != digest:
        raise IdempotencyConflict(key, operation)
    return row["response"]


async def remember(conn: asyncpg.Connection, caller: Caller, key: str, outcome: dict) -> None:
    await store.set_response(conn, caller.tenant_id, key, outcome)

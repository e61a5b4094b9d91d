"""Ids and keyset pagination, validated the same way for every list and lookup."""
from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone

from billing.services.errors import ValidationError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def parse_uuid(text: str, field: str) -> uuid.UUID:
    if not text:
        raise ValidationError(field, "is required")
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise ValidationError(field, f"must be a UUID, got {text[:64]!r}") from None


MAX_FILTER_LENGTH = 255


def filter_text(text: str, field: str) -> str:
    """A text filter of a list as given (empty: no filter). PostgreSQL text cannot hold NUL,
    and no stored value is longer than the limit, so such a filter is the caller's error."""
    if len(text) > MAX_FILTER_LENGTH or "\x00" in text:
        raise ValidationError(field, f"must be at most {MAX_FILTER_LENGTH} characters, without NUL")
    return text


def page_size(size: int) -> int:
    if size < 0:
        raise ValidationError("page_size", "must not be negative")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(created_at: datetime, ident: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(ident)]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str) -> tuple[datetime, uuid.UUID] | None:
    """The position after which the next page starts; None for the first page."""
    if not token:
        return None
    try:
        created_at, ident = json.loads(base64.urlsafe_b64decode(token.encode()))
        at = datetime.fromisoformat(created_at)
        if at.tzinfo is None:
            raise ValueError("naive time")
        # In UTC here, so a time PostgreSQL cannot take (out of datetime's range once
        # converted, e.g. year 9999 at -14:00) is refused now, not by the driver later.
        return at.astimezone(timezone.utc), uuid.UUID(ident)
    except Exception:  # noqa: BLE001 - any malformed token is the caller's error
        raise ValidationError("page_token", "is not a token this service issued") from None

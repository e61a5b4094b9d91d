"""Ids and keyset pagination, validated the same way for every list and lookup."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
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


class PageTokens:
    """Signs and checks page tokens. A token names the position after which the next page
    starts, and is bound by an HMAC-SHA256 to the method, the filters and the tenant it was
    issued for: a token edited, forged, or given to another method, other filters or by
    another tenant is refused with INVALID_ARGUMENT naming page_token.

    The key comes from BILLING_PAGE_TOKEN_SECRET; unset, each process draws a random one,
    so a token is good only on the replica that issued it and until it restarts (set the
    same secret on every replica behind one address; docs/api.md)."""

    def __init__(self, secret: str | bytes = b""):
        key = secret.encode() if isinstance(secret, str) else secret
        self.shared = bool(key)
        self._key = key or secrets.token_bytes(32)

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    @staticmethod
    def _scope(method: str, tenant: uuid.UUID, filters: dict) -> str:
        return json.dumps([method, str(tenant), filters], sort_keys=True, separators=(",", ":"), default=str)

    def encode(self, method: str, tenant: uuid.UUID, filters: dict, created_at: datetime, ident: uuid.UUID) -> str:
        position = json.dumps([created_at.isoformat(), str(ident)], separators=(",", ":")).encode()
        mac = self._mac(self._scope(method, tenant, filters).encode() + b"\n" + position)
        return _b64(position) + "." + _b64(mac)

    def decode(self, token: str, method: str, tenant: uuid.UUID, filters: dict) -> tuple[datetime, uuid.UUID] | None:
        """The position after which the next page starts; None for the first page."""
        if not token:
            return None
        try:
            body_text, mac_text = token.split(".")
            position = _unb64(body_text)
        except ValueError:
            raise ValidationError("page_token", "is not a token this service issued") from None
        expected = self._mac(self._scope(method, tenant, filters).encode() + b"\n" + position)
        # Compared as text: base64's last character carries spare bits, so an edited token can
        # decode to the same bytes; only the exact text this service issued is accepted.
        if not hmac.compare_digest(mac_text.encode(), _b64(expected).encode()):
            raise ValidationError("page_token", f"is not valid for this {method} request: a page token is valid "
                                                "only, unedited, for the method, filters and tenant of the "
                                                "request that returned it")
        try:
            created_at, ident = json.loads(position)
            at = datetime.fromisoformat(created_at)
            if at.tzinfo is None:
                raise ValueError("naive time")
            # In UTC here, so a time PostgreSQL cannot take is refused now, not by the driver later.
            return at.astimezone(timezone.utc), uuid.UUID(ident)
        except Exception:  # noqa: BLE001 - signed with our key, so a guard only
            raise ValidationError("page_token", "is not a token this service issued") from None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or len(text) > 400:
        raise ValueError("empty or too long")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except Exception as exc:  # noqa: BLE001 - binascii.Error and friends
        raise ValueError(str(exc)) from None

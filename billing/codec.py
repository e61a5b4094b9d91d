"""Avro codec for every Kafka topic: single-object encoding with schema fingerprints.

Wire format (Avro spec, "Single-object encoding")::

    C3 01 | 8-byte CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical
          |   Form, little-endian | Avro binary payload

Schemas come from ``schemas/avro/*.avsc`` (the current version of each record, which is
also the reader schema) and ``schemas/avro/history/<Name>.<n>.avsc`` (older versions, kept
so that messages written with them stay readable). All are loaded once at import. A reader
looks the writer schema up by fingerprint and resolves it to the current schema (Avro schema
resolution: fields added since get their defaults). Docs are not part of the canonical
form, so editing a "doc" changes no fingerprint.

Representation: plain dicts as fastavro reads them without logical types: decimals are
text, times ``*_us`` longs (the files mark times ``timestamp-micros`` for other readers; not
part of the canonical form, so same fingerprint and bytes; stripped here). The union
``SubscriptionCommand.command`` is a ``(full record name, fields)`` tuple both ways.

The Confluent Schema Registry wire format (``00 | schema id | Avro binary``) is decoded too
once billing.codec_confluent has a registry to resolve ids (BILLING_SCHEMA_REGISTRY_URL).

Every failure on bad input raises a :class:`CodecError` subclass, never anything else.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fingerprint_hex
from fastavro.schema import to_parsing_canonical_form

from billing.resources import schemas_dir

__all__ = [
    "SCHEMA_DIR", "HISTORY_DIR", "NAMESPACE", "Schema", "CodecError", "UnknownSchemaError", "MalformedMessageError",
    "encode", "decode", "decode_many", "decode_any", "fingerprint", "content_type", "register_history_schema",
    "schema_json",
]

# schemas/avro of the repository, installed as billing._schemas (billing/resources.py).
SCHEMA_DIR = schemas_dir() / "avro"
HISTORY_DIR = SCHEMA_DIR / "history"
NAMESPACE = "billing.v1"

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = 5
_FINGERPRINT_ALGORITHM = "CRC-64-AVRO"


class Schema(enum.StrEnum):
    """The record types on the topics; values are the Avro record names."""

    USAGE_EVENT = "UsageEvent"
    SUBSCRIPTION_COMMAND = "SubscriptionCommand"
    SUBSCRIPTION_EVENT = "SubscriptionEvent"
    BILLING_RUN_REQUEST = "BillingRunRequest"
    INVOICE_REQUEST = "InvoiceRequest"
    USAGE_ALERT = "UsageAlert"

    @property
    def full_name(self) -> str:
        return f"{NAMESPACE}.{self.value}"


_FILES: dict[Schema, str] = {
    Schema.USAGE_EVENT: "usage_event.avsc",
    Schema.SUBSCRIPTION_COMMAND: "subscription_command.avsc",
    Schema.SUBSCRIPTION_EVENT: "subscription_event.avsc",
    Schema.BILLING_RUN_REQUEST: "billing_run_request.avsc",
    Schema.INVOICE_REQUEST: "invoice_request.avsc",
    Schema.USAGE_ALERT: "usage_alert.avsc",
}


class CodecError(ValueError):
    """Any failure to encode or decode a message.

    ``index`` is the position of the failing message in a :func:`decode_many` batch
    (``None`` elsewhere).
    """

    index: int | None = None


class UnknownSchemaError(CodecError):
    """The message's writer-schema fingerprint is not known to this reader."""

    def __init__(self, message: str, fingerprint: bytes) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class MalformedMessageError(CodecError):
    """Bad marker, truncated, undecodable payload, or not the expected record type."""


@dataclass(frozen=True, slots=True)
class _Writer:
    schema: Schema
    parsed: dict[str, Any]  # parsed writer schema
    reader: dict[str, Any] | None  # parsed current schema; None if the writer is current
    fingerprint: bytes
    source: str
    raw: dict[str, Any]  # the schema as written (with docs and logical types), for a registry


_CURRENT: dict[Schema, _Writer] = {}
_WRITERS: dict[bytes, _Writer] = {}  # fingerprint -> writer schema, every known version
_HEADERS: dict[Schema, bytes] = {}
_CONTENT_TYPES: dict[Schema, str] = {}
_COMMAND_NAMES: frozenset[str] = frozenset()
_confluent_fingerprint: Callable[[bytes], bytes] | None = None  # 00 + id -> writer fingerprint (codec_confluent)


def _strip_logical(node: Any) -> Any:
    """The schema without logicalType annotations (fastavro would turn times into datetimes)."""
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def _fingerprint_of(raw: Mapping[str, Any]) -> bytes:
    # fastavro's hex digest of CRC-64-AVRO is already in little-endian byte order.
    return bytes.fromhex(_fingerprint_hex(to_parsing_canonical_form(raw), _FINGERPRINT_ALGORITHM))


def _load(source: str | PathLike[str] | Mapping[str, Any]) -> tuple[Schema, dict[str, Any], bytes, str, dict]:
    if isinstance(source, Mapping):
        raw, origin = dict(source), "<dict>"
    else:
        origin = str(source)
        try:
            raw = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CodecError(f"cannot read Avro schema {origin}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise CodecError(f"Avro schema {origin} is not a record schema")
    name = str(raw.get("name", ""))
    namespace = raw.get("namespace")
    full = name if "." in name or not namespace else f"{namespace}.{name}"
    short = full.rpartition(".")[2]
    if full.rpartition(".")[0] != NAMESPACE or short not in {s.value for s in Schema}:
        known = ", ".join(s.full_name for s in Schema)
        raise CodecError(f"Avro schema {origin} defines {full!r}, not one of: {known}")
    try:
        parsed = parse_schema(_strip_logical(raw))
        fp = _fingerprint_of(raw)
    except Exception as exc:  # fastavro raises several types for invalid schemas
        raise CodecError(f"invalid Avro schema {origin}: {exc}") from exc
    return Schema(short), parsed, fp, origin, raw


def register_history_schema(source: str | PathLike[str] | Mapping[str, Any]) -> bytes:
    """Make an older version of a schema (a path to an .avsc file, or the schema as a dict)
    readable: messages written with it decode, resolved to the current schema.

    Returns its fingerprint. Registering the current version or an already known one is a
    no-op. Files in ``schemas/avro/history/`` are registered at import.
    """
    schema, parsed, fp, origin, raw = _load(source)
    if fp not in _WRITERS:
        _WRITERS[fp] = _Writer(schema, parsed, _CURRENT[schema].parsed, fp, origin, raw)
    return fp


def _load_all() -> None:
    global _COMMAND_NAMES
    for schema, filename in _FILES.items():
        path = SCHEMA_DIR / filename
        loaded, parsed, fp, origin, raw = _load(path)
        if loaded is not schema:
            raise CodecError(f"{path} defines {loaded.full_name}, expected {schema.full_name}")
        writer = _Writer(schema, parsed, None, fp, origin, raw)
        _CURRENT[schema] = writer
        _WRITERS[fp] = writer
        _HEADERS[schema] = MAGIC + fp
        _CONTENT_TYPES[schema] = f"application/vnd.apache.avro+binary; schema={schema.full_name}"
    if HISTORY_DIR.is_dir():
        for path in sorted(HISTORY_DIR.glob("*.avsc")):
            register_history_schema(path)
    command_field = next(
        f for f in _CURRENT[Schema.SUBSCRIPTION_COMMAND].parsed["fields"] if f["name"] == "command"
    )
    _COMMAND_NAMES = frozenset(branch["name"] for branch in command_field["type"])


_load_all()


# --------------------------------------------------------------------------- public API


def parsed_schema(schema: Schema) -> dict[str, Any]:
    """The current version of ``schema`` as fastavro parsed it (for readers that check a layout)."""
    return _CURRENT[Schema(schema)].parsed


def fingerprint(schema: Schema) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint (little-endian) of the current version of ``schema``."""
    return _CURRENT[Schema(schema)].fingerprint


def schema_json(fp_or_schema: bytes | Schema) -> str:
    """A known writer schema (by fingerprint, or a Schema's current one) as its file's JSON."""
    writer = _CURRENT[Schema(fp_or_schema)] if isinstance(fp_or_schema, str) else _WRITERS.get(fp_or_schema)
    if writer is None:
        raise _unknown(bytes(fp_or_schema))
    return json.dumps(writer.raw, separators=(",", ":"))


def content_type(schema: Schema) -> str:
    """Value for a Kafka ``content-type`` header, e.g.
    ``application/vnd.apache.avro+binary; schema=billing.v1.UsageEvent``."""
    return _CONTENT_TYPES[Schema(schema)]


def encode(schema: Schema, record: Mapping[str, Any]) -> bytes:
    """Encode ``record`` with the current version of ``schema`` (single-object encoding).

    Raises :class:`CodecError` if the record does not fit the schema. Fields with a
    default may be omitted; keys that are not fields are ignored (fastavro's behaviour).
    """
    try:
        writer = _CURRENT[schema]
    except KeyError:
        raise CodecError(f"unknown schema {schema!r}; known: {', '.join(Schema)}") from None
    if writer.schema is Schema.SUBSCRIPTION_COMMAND:
        _check_command(record)
    buf = BytesIO()
    buf.write(_HEADERS[writer.schema])
    try:
        schemaless_writer(buf, writer.parsed, record)
    except Exception as exc:  # fastavro raises ValueError/TypeError/AttributeError/...
        raise CodecError(f"cannot encode {writer.schema.full_name}: {exc}") from exc
    return buf.getvalue()


def _check_command(record: Mapping[str, Any]) -> None:
    # fastavro would guess the union branch of a bare dict by its keys, and the empty
    # records (ActivateSubscription, ResumeSubscription) are indistinguishable: demand a name.
    try:
        command = record["command"]
    except (KeyError, TypeError):
        raise CodecError("SubscriptionCommand needs a 'command'") from None
    if isinstance(command, tuple) and len(command) == 2:
        name = command[0]
    elif isinstance(command, Mapping):
        name = command.get("-type")
    else:
        name = None
    if name not in _COMMAND_NAMES:
        raise CodecError(
            "SubscriptionCommand.command must be a (record name, fields) tuple with one of "
            f"{sorted(_COMMAND_NAMES)}, got {command!r:.200}"
        )


def _header_error(data: Any) -> CodecError:
    if data is None:
        return MalformedMessageError("message is None (a Kafka tombstone?), not an Avro message")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return MalformedMessageError(f"message must be bytes, not {type(data).__name__}")
    n = len(data)
    if n == 0:
        return MalformedMessageError("empty message, not an Avro single-object encoding")
    if bytes(data[:2]) != MAGIC[:n]:
        return MalformedMessageError(
            f"not an Avro single-object encoding: marker {bytes(data[:2]).hex()}, expected c301 (or 00 + schema id)"
        )
    return MalformedMessageError(
        f"truncated message: {n} bytes, the single-object header alone is {HEADER_SIZE}"
    )


def _unknown(fp: bytes) -> UnknownSchemaError:
    known = "; ".join(
        f"{s.full_name} [{', '.join(w.fingerprint.hex() for w in _WRITERS.values() if w.schema is s)}]"
        for s in Schema
    )
    return UnknownSchemaError(
        f"unknown writer schema fingerprint {fp.hex()} (CRC-64-AVRO, little-endian): not one of "
        f"the schema versions this reader knows: {known}. A newer producer? Deploy the schema "
        f"(or keep the old version in schemas/avro/history/).",
        fp,
    )


def _writer_of(data: Any) -> tuple[_Writer, bytes, int]:
    """(writer, data as bytes, offset of the Avro body)."""
    if type(data) is not bytes:
        if not isinstance(data, (bytearray, memoryview)):
            raise _header_error(data)
        data = bytes(data)
    if data[:1] == CONFLUENT_MAGIC and len(data) >= CONFLUENT_HEADER_SIZE:
        if _confluent_fingerprint is None:
            raise MalformedMessageError(
                f"Confluent Schema Registry wire format (schema id {int.from_bytes(data[1:5], 'big')}), "
                "but no registry is configured: set BILLING_SCHEMA_REGISTRY_URL")
        return _WRITERS[_confluent_fingerprint(data)], data, CONFLUENT_HEADER_SIZE
    if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
        raise _header_error(data)
    fp = data[2:HEADER_SIZE]
    writer = _WRITERS.get(fp)
    if writer is None:
        raise _unknown(fp)
    return writer, data, HEADER_SIZE


def _read(writer: _Writer, data: bytes, offset: int = HEADER_SIZE) -> dict[str, Any]:
    fo = BytesIO(data[offset:])
    try:
        record = schemaless_reader(fo, writer.parsed, writer.reader, return_record_name=True)
    except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, resolution errors ...
        raise MalformedMessageError(
            f"undecodable {writer.schema.full_name} payload "
            f"(writer {writer.fingerprint.hex()}): {type(exc).__name__}: {exc}"
        ) from exc
    if fo.tell() != len(data) - offset:
        raise MalformedMessageError(
            f"{len(data) - offset - fo.tell()} trailing bytes after the "
            f"{writer.schema.full_name} payload"
        )
    return record


def decode(schema: Schema, data: bytes) -> dict[str, Any]:
    """Decode a message that must be a ``schema`` record, written with any known version
    of it; the result has the shape of the current version."""
    writer, data, offset = _writer_of(data)
    if writer.schema != schema:
        raise MalformedMessageError(
            f"message is a {writer.schema.full_name} (writer {writer.fingerprint.hex()}), "
            f"expected {NAMESPACE}.{schema}"
        )
    return _read(writer, data, offset)


def decode_any(data: bytes) -> tuple[Schema, dict[str, Any]]:
    """Decode a message of any known record type; returns ``(schema, record)``."""
    writer, data, offset = _writer_of(data)
    return writer.schema, _read(writer, data, offset)


def decode_many(
    schema: Schema,
    messages: Iterable[bytes],
    *,
    on_error: Callable[[int, CodecError], None] | None = None,
) -> list[dict[str, Any]]:
    """Decode a batch of ``schema`` messages, in order.

    Without ``on_error`` the first bad message raises its :class:`CodecError` with
    ``.index`` set to its position. With ``on_error``, each bad message is reported as
    ``on_error(index, error)`` and left out of the result (e.g. to send it to a DLQ).
    """
    writer = _CURRENT[Schema(schema)]
    header, parsed, size = _HEADERS[writer.schema], writer.parsed, HEADER_SIZE
    reader, new_io = schemaless_reader, BytesIO
    out: list[dict[str, Any]] = []
    append = out.append
    for index, data in enumerate(messages):
        # Fast path: written with the current schema (the common case).
        if type(data) is bytes and data.startswith(header):
            fo = new_io(data[size:])
            try:
                record = reader(fo, parsed, None, True)
            except Exception:
                pass  # the slow path below raises the proper error
            else:
                if fo.tell() == len(data) - size:
                    append(record)
                    continue
        try:
            append(decode(schema, data))
        except CodecError as exc:
            exc.index = index
            if on_error is None:
                raise
            on_error(index, exc)
    return out

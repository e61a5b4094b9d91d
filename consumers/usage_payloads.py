"""Usage payloads on `billing.usage.v1`: Avro or CloudEvents JSON -> `UsageEvent`s.

`decode_batch(batch)` turns a runner batch into ``(events, positions, dead_letters)``
(``events[k]`` came from ``batch[positions[k]]``) and never raises on bad input. Only the
shape is checked here; whether an event is acceptable is `billing.services.usage.ingest`'s
call. The formats, the CloudEvents mapping and the dead-letter reasons: docs/usage.md.
"""
from __future__ import annotations

import json
import re
from itertools import compress, repeat
from operator import is_, itemgetter

from billing import codec, native
from billing.services.usage_ingest import UsageEvent
from consumers import usage_avro
from consumers.runner import DeadLetter, Message

__all__ = ["decode_batch", "parse_rfc3339_us"]

_AVRO = codec.MAGIC  # b"\xc3\x01"
_CONFLUENT = codec.CONFLUENT_MAGIC  # b"\x00": the Confluent wire format (schema id), decoded by the codec
_USAGE = codec.Schema.USAGE_EVENT
_UNDECODABLE = "undecodable"
_INVALID = "invalid_cloudevent"
_VALUE = itemgetter(4)  # Message.value
# The hand reader as compiled by `make install` when it could (billing/native.py), else as written.
READER = native.compiled(usage_avro)


class _Number(str):
    """A JSON number, as the exact text it was written with (a str, told apart by type)."""

    __slots__ = ()


_JSON = json.JSONDecoder(parse_float=_Number, parse_int=_Number)
_scan = _JSON.scan_once  # the C scanner: (value, end) at an index; no trailing-data check
_JSON_WS = " \t\n\r"

# ------------------------------------------------------------------ RFC 3339 -> integer us

_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)", re.ASCII)
_time_match = _TIME.fullmatch
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SCALE = (1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)
# "YYYY-MM-DDTHH:MM" -> seconds since the epoch of that minute (UTC, before the offset),
# or -1 when the date or time is out of range. Events of a batch share few minutes.
_MINUTES: dict[str, int] = {}


def _minute(head: str) -> int:
    y, m, d, h, mi = int(head[:4]), int(head[5:7]), int(head[8:10]), int(head[11:13]), int(head[14:16])
    if not 1 <= m <= 12 or d < 1 or h > 23 or mi > 59:
        return -1
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if d > (29 if m == 2 and leap else _MONTH_DAYS[m]):
        return -1
    # Howard Hinnant's days_from_civil, integers only.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + h * 3600 + mi * 60


def parse_rfc3339_us(text: str) -> int | None:
    """Microseconds since 1970-01-01T00:00:00Z of an RFC 3339 date-time, or None if it
    is not one. Fractions past microseconds are truncated (rounded down)."""
    if type(text) is not str or _time_match(text) is None:
        return None
    head = text[:16]
    base = _MINUTES.get(head)
    if base is None:
        base = _minute(head)
        if len(_MINUTES) >= 4096:
            _MINUTES.clear()
        _MINUTES[head] = base
    s = int(text[17:19])
    if base == -1 or s > 59:  # -1: bad date (valid minutes are multiples of 60)
        return None
    last = text[-1]
    if last == "Z" or last == "z":
        body_end = -1
    else:
        oh, om = int(text[-5:-3]), int(text[-2:])
        if oh > 23 or om > 59:
            return None
        base += -(oh * 3600 + om * 60) if text[-6] == "+" else oh * 3600 + om * 60
        body_end = -6
    us = (base + s) * 1_000_000
    if text[19] == ".":
        frac = text[20:body_end]
        us += int(frac[:6]) if len(frac) >= 6 else int(frac) * _SCALE[len(frac)]
    return us


# ------------------------------------------------------------------ CloudEvents JSON


def _cloudevent(value: bytes) -> UsageEvent | tuple[str, str]:
    """The event, or (reason, detail)."""
    try:
        text = value.decode("utf-8")
        if text[:1] == "{":
            ce, end = _scan(text, 0)
        else:  # leading whitespace (content-type header said CloudEvents)
            ce = _JSON.decode(text)
            end = len(text)
    except StopIteration:
        return _UNDECODABLE, "not valid JSON"
    except Exception as exc:  # ValueError (JSON, UTF-8), RecursionError on absurd nesting
        return _UNDECODABLE, f"not valid JSON: {type(exc).__name__}: {str(exc)[:200]}"
    if end != len(text) and text[end:].strip(_JSON_WS):
        return _UNDECODABLE, f"not valid JSON: extra data after the object at character {end}"
    if type(ce) is not dict:
        kind = "a batch (JSON array)" if type(ce) is list else f"a JSON {type(ce).__name__}"
        return _UNDECODABLE, f"CloudEvents JSON must be one object, got {kind}"
    get = ce.get
    sv = get("specversion")
    if sv != "1.0" or type(sv) is not str:
        return _INVALID, "specversion: missing" if sv is None else f"specversion: must be '1.0', got {str(sv)[:20]!r}"
    data = get("data")
    if type(data) is not dict:
        if data is None and "data_base64" in ce:
            return _INVALID, "data: data_base64 is not supported, send data as a JSON object"
        return _INVALID, "data: missing" if data is None else "data: must be a JSON object"
    dget = data.get
    event_id = get("id")
    if type(event_id) is not str or not event_id:
        return _INVALID, _bad("id", event_id, "a non-empty string")
    t = get("time")
    if t is None:
        return _INVALID, "time: missing"
    occurred = parse_rfc3339_us(t)
    if occurred is None:
        return _INVALID, f"time: not an RFC 3339 date-time with offset: {str(t)[:40]!r}"
    tenant = get("tenantid")
    if tenant is None:
        tenant = dget("tenant_id")
    if type(tenant) is not str:
        return _INVALID, _bad("tenantid", tenant, "a string (or data.tenant_id)")
    sub = get("subject")
    if sub is None:
        sub = dget("subscription_id")
    if type(sub) is not str:
        return _INVALID, _bad("subject", sub, "a string (or data.subscription_id)")
    metric = dget("metric")
    if metric is None:
        metric = dget("metric_code")
    if type(metric) is not str:
        return _INVALID, _bad("data.metric", metric, "a string")
    quantity = dget("quantity")
    if quantity.__class__ is not str:
        if quantity.__class__ is _Number:
            quantity = str(quantity)  # the number's exact text, as a plain str
        else:
            return _INVALID, _bad("data.quantity", quantity, "a decimal string or number")
    props = dget("properties")
    if props is not None:
        if type(props) is not dict:
            return _INVALID, "data.properties: must be an object of string values"
        for k, v in props.items():
            if type(v) is not str:
                return _INVALID, f"data.properties: value of {k[:40]!r} must be a string"
        if not props:
            props = None
    dct = get("datacontenttype")
    if dct is not None and dct != "application/json" and not _json_type(dct):
        return _INVALID, f"datacontenttype: must be JSON, got {str(dct)[:60]!r}"
    if b"\\u" in value:  # escapes may make lone surrogates or NULs, which PostgreSQL refuses
        bad = _bad_text(event_id, tenant, sub, metric, quantity, props)
        if bad:
            return _INVALID, bad
    return UsageEvent(event_id, tenant, sub, metric, quantity, occurred, props)


def _bad(field: str, value, wanted: str) -> str:
    if value is None:
        return f"{field}: missing"
    return f"{field}: must be {wanted}, got {'a number' if type(value) is _Number else type(value).__name__}"


def _json_type(ct) -> bool:
    if type(ct) is not str:
        return False
    base = ct.partition(";")[0].strip().lower()
    return base in ("application/json", "text/json") or base.endswith("+json")


def _bad_text(event_id, tenant, sub, metric, quantity, props) -> str | None:
    fields = [("id", event_id), ("tenantid", tenant), ("subject", sub), ("data.metric", metric),
              ("data.quantity", quantity)]
    if props:
        fields += [("data.properties", s) for kv in props.items() for s in kv]
    for name, s in fields:
        if "\x00" in s:
            return f"{name}: contains a NUL character"
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name}: contains a lone surrogate (\\ud800-\\udfff escape)"
    return None


def _is_cloudevents_header(msg: Message) -> bool:
    ct = msg.headers.get("content-type")
    return ct is not None and ct[:28].lower() == b"application/cloudevents+json"


def _undecodable_detail(msg: Message) -> str:
    v = msg.value
    if v is None:
        return "no value (a tombstone?), expected Avro (C3 01) or CloudEvents JSON ({)"
    if not isinstance(v, (bytes, bytearray, memoryview)):
        return f"value is a {type(v).__name__}, not bytes"
    if not v:
        return "empty value, expected Avro (C3 01) or CloudEvents JSON ({)"
    if any(k.startswith("ce_") for k in msg.headers):
        return "CloudEvents binary mode (ce_ headers) is not supported; send structured mode JSON"
    return f"neither Avro (C3 01, or 00 + schema id) nor CloudEvents JSON ({{): starts with {bytes(v[:8]).hex()}"


# ------------------------------------------------------------------ the batch


def decode_batch(batch: list[Message]) -> tuple[list[UsageEvent], list[int], list[DeadLetter]]:
    """Decode a batch: (events, position in `batch` of each event, dead letters), all in
    batch order. An event is a `UsageEvent` or, from the hand Avro reader, a plain tuple
    in its order: read them by position."""
    # The usual Avro record, read by hand; the rest (and any doubt) goes to the codec.
    fast = READER.decode
    strings = READER.Strings()
    values = list(map(_VALUE, batch))
    # The usual batch: every value bytes and read by hand, in one C-level pass over them.
    first: list[UsageEvent | None] | None = None
    if fast is not None and {*map(type, values)} == {bytes}:
        first = list(map(fast, values, repeat(strings)))
        if None not in first:
            return first, list(range(len(first))), []  # type: ignore[return-value]
    events: list[UsageEvent | None] = []
    positions: list[int] = []
    dead: list[DeadLetter] = []
    dead_pos: list[int] = []  # the batch position of each dead letter
    add_event, add_pos = events.append, positions.append
    # Values the codec decodes (and their slot in `events`, None until then).
    slow_values: list[bytes] = []
    slow_slots: list[int] = []
    # Every value, or (after the pass above) only those it could not read, in order; the
    # runs read by hand between them are copied over as slices.
    todo = range(len(values)) if first is None else compress(range(len(values)), map(is_, first, repeat(None)))
    done = 0
    for i in todo:
        if first is not None:
            if done < i:
                events += first[done:i]
                positions += range(done, i)
            done = i + 1
        v = values[i]
        if v.__class__ is not bytes:
            if isinstance(v, (bytearray, memoryview)):
                v = bytes(v)
            else:
                dead.append(DeadLetter(batch[i], _UNDECODABLE, _undecodable_detail(batch[i])))
                dead_pos.append(i)
                continue
        if v.startswith(_AVRO):
            event = fast(v, strings) if fast is not None and first is None else None
            if event is None:
                slow_slots.append(len(events))
                slow_values.append(v)
            add_event(event)
            add_pos(i)
        elif v.startswith(_CONFLUENT):
            slow_slots.append(len(events))
            slow_values.append(v)
            add_event(None)
            add_pos(i)
        elif v.startswith(b"{") or _is_cloudevents_header(batch[i]):
            out = _cloudevent(v)
            if out.__class__ is tuple:
                dead.append(DeadLetter(batch[i], out[0], out[1]))  # type: ignore[index]
                dead_pos.append(i)
            else:
                add_event(out)  # type: ignore[arg-type]
                add_pos(i)
        else:
            dead.append(DeadLetter(batch[i], _UNDECODABLE, _undecodable_detail(batch[i])))
            dead_pos.append(i)
    if first is not None and done < len(values):
        events += first[done:]
        positions += range(done, len(values))
    if not slow_values:
        return events, positions, dead  # type: ignore[return-value]
    failed = _decode_avro(events, slow_values, slow_slots)
    if failed:
        for slot, error in failed.items():
            dead.append(DeadLetter(batch[positions[slot]], _UNDECODABLE, error))
            dead_pos.append(positions[slot])
        dead = [d for _, d in sorted(zip(dead_pos, dead), key=itemgetter(0))]
        keep = [True] * len(events)
        for slot in failed:
            keep[slot] = False
        events = list(compress(events, keep))
        positions = list(compress(positions, keep))
    return events, positions, dead  # type: ignore[return-value]


def _decode_avro(events: list[UsageEvent | None], values: list[bytes], slots: list[int]) -> dict[int, str]:
    """Decode `values` with the codec into their `slots` of `events`; the slots that failed
    (left None) with their error's text.

    Only the text is kept, never the exception: its traceback holds the frames down from
    `decode_batch`, whose locals hold this dict, a reference cycle that would leave the
    whole batch (messages, events) to the cyclic garbage collector instead of freeing it
    when the batch is done."""
    failed: dict[int, str] = {}

    def on_error(index: int, error: codec.CodecError) -> None:
        failed[index] = str(error)[:1000]

    try:
        records = codec.decode_many(_USAGE, values, on_error=on_error)
    except OSError:
        raise  # the schema registry unreachable: the runner retries the batch
    except Exception:  # not expected from the codec; decode one by one to keep positions right
        failed.clear()
        records = []
        for index, value in enumerate(values):
            try:
                records.append(codec.decode(_USAGE, value))
            except OSError:
                raise
            except Exception as exc:
                failed[index] = str(exc)[:1000]
    ok = [slot for index, slot in enumerate(slots) if index not in failed]
    for slot, r in zip(ok, records):
        events[slot] = UsageEvent(r["event_id"], r["tenant_id"], r["subscription_id"], r["metric_code"],
                                  r["quantity"], r["occurred_at_us"], r["properties"] or None)
    return {slots[index]: error for index, error in failed.items()}

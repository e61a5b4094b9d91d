"""A usage load generator: `billing produce-usage`, and `produce_load()` for benchmarks.

Produces ``count`` messages to the usage topic for one tenant, spread at random over the
given subscriptions, and prints (returns) a summary::

    {"produced": 100000, "unique": 89000, "duplicates": 10000, "bad": 1000, "seconds": 0.9, ...}

* ``unique``: new events, ids ``<run_id>-<n>`` (``run_id`` is random unless given, so
  runs never collide; ``ids="uuid4"``: random UUIDv4 from the seed, as real producers send), quantities 1..100, ``occurred_at`` = the run's start time plus
  ``n`` microseconds (so within the current period and never in the future);
* ``duplicates`` (share ``--duplicates``): exact re-sends (same key, value, headers) of
  one of the last 10,000 unique events: the service counts each once;
* ``bad`` (share ``--bad``): half random bytes (dead-lettered ``undecodable``), half events
  with a negative quantity (``negative_quantity``), each with its own id.

The shares are exact (rounded), in random order. ``--cloudevents`` is the share of unique
and negative events sent as CloudEvents JSON instead of Avro (duplicates repeat their
original's format). ``--seed`` fixes the order, formats, subscriptions and quantities;
pass ``run_id`` too to reproduce the exact bytes. ``--rate`` caps events per second.

Messages are pre-encoded with a direct Avro writer for this record (checked at start
against `billing.codec`, falling back to it if they ever differ), so one core generates
well over 100k events/s; the broker's acknowledgements usually set the pace.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

__all__ = ["produce_load", "add_arguments", "run_cli", "main"]

DUPLICATE_WINDOW = 10_000
_QUANTITIES = [str(q) for q in range(1, 101)]


def _zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SHORT_LEN = [bytes((2 * n,)) for n in range(64)]  # zigzag varint of lengths < 64: one byte


def _avro_str(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    return (_SHORT_LEN[n] if n < 64 else _zigzag_varint(n)) + b


# Varint bytes of the low 14 bits of a zigzag value that has higher bits (continuation set).
_LOW14 = [bytes(((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80)) for z in range(1 << 14)]


class _AvroUsage:
    """Avro single-object encoding of UsageEvent with constant tenant and metric, empty
    properties; subscription and quantity from small tables, time non-negative."""

    def __init__(self, tenant_id: str, metric: str):
        from billing import codec

        self.prefix = codec.MAGIC + codec.fingerprint(codec.Schema.USAGE_EVENT)
        self.tenant = _avro_str(tenant_id)
        self.metric = _avro_str(metric)
        self._last_hi = -1
        self._hi_bytes = b""

    def time(self, us: int) -> bytes:
        z = us << 1  # zigzag of a non-negative long
        if z < 1 << 14:
            return _zigzag_varint(us)
        hi = z >> 14
        if hi != self._last_hi:
            self._last_hi = hi
            out = bytearray()
            while hi > 0x7F:
                out.append((hi & 0x7F) | 0x80)
                hi >>= 7
            out.append(hi)
            self._hi_bytes = bytes(out)
        return _LOW14[z & 0x3FFF] + self._hi_bytes

    def encode(self, event_id: str, sub_enc: bytes, quantity_enc: bytes, us: int) -> bytes:
        return b"".join((self.prefix, _avro_str(event_id), self.tenant, sub_enc, self.metric, quantity_enc,
                         self.time(us), b"\x00"))


class _CodecUsage:
    """The slow but certain way, if the direct writer ever disagrees with the codec."""

    def __init__(self, tenant_id: str, metric: str):
        from billing import codec

        self._encode, self._schema = codec.encode, codec.Schema.USAGE_EVENT
        self._rec = {"event_id": "", "tenant_id": tenant_id, "subscription_id": "", "metric_code": metric,
                     "quantity": "", "occurred_at_us": 0, "properties": {}}

    def encode(self, event_id: str, sub: str, quantity: str, us: int) -> bytes:
        rec = self._rec
        rec["event_id"], rec["subscription_id"], rec["quantity"], rec["occurred_at_us"] = event_id, sub, quantity, us
        return self._encode(self._schema, rec)


def _avro_encoder(tenant_id: str, metric: str):
    """The direct writer, if it writes exactly what billing.codec writes; else None."""
    from billing import codec

    fast = _AvroUsage(tenant_id, metric)
    sample = ("check-1", "sub", "12", 1_764_000_000_123_457)
    if fast.encode(sample[0], _avro_str(sample[1]), _avro_str(sample[2]), sample[3]) == codec.encode(
            codec.Schema.USAGE_EVENT, {"event_id": sample[0], "tenant_id": tenant_id, "subscription_id": sample[1],
                                       "metric_code": metric, "quantity": sample[2], "occurred_at_us": sample[3],
                                       "properties": {}}):
        return fast
    return None


def _rfc3339(us: int, cache: list) -> str:
    sec, frac = divmod(us, 1_000_000)
    if cache[0] != sec:
        cache[0] = sec
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{cache[1]}.{frac:06d}Z"


def produce_load(settings, *, count: int = 100_000, tenant_id: str, subscription_ids: list[str],
                 metric: str = "api_calls", duplicates: float = 0.0, bad: float = 0.0, cloudevents: float = 0.0,
                 rate: float = 0.0, seed: int | None = None, progress: bool = True, topic: str | None = None,
                 run_id: str | None = None, start_us: int | None = None, flush_timeout_s: float = 120.0,
                 ids: str = "sequential") -> dict:
    """Produce the load and wait for every delivery; return the summary dict."""
    import random

    from producers.usage_client import AVRO_HEADERS, UsageProducer

    if count < 0:
        raise ValueError("count must be >= 0")
    if not subscription_ids:
        raise ValueError("need at least one subscription id")
    for name, share in (("duplicates", duplicates), ("bad", bad), ("cloudevents", cloudevents)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be a share between 0 and 1, got {share}")
    if duplicates + bad > 1.0:
        raise ValueError("duplicates + bad must not exceed 1")
    if rate < 0:
        raise ValueError("rate must be >= 0 (0 = unlimited)")
    if ids not in ("sequential", "uuid4"):
        raise ValueError(f"ids must be 'sequential' or 'uuid4', got {ids!r}")

    rng = random.Random(seed)
    run_id = run_id or uuid.uuid4().hex[:12]
    start_us = time.time_ns() // 1000 if start_us is None else start_us
    n_bad = round(count * bad)
    n_dup = min(round(count * duplicates), count - n_bad)
    if n_dup and count - n_bad - n_dup == 0:
        n_dup = 0  # duplicates need an original
    n_unique = count - n_bad - n_dup

    subs = list(subscription_ids)
    sub_keys = [s.encode() for s in subs]
    fast = _avro_encoder(tenant_id, metric)
    slow = None if fast is not None else _CodecUsage(tenant_id, metric)
    sub_enc = [_avro_str(s) for s in subs]
    quantity_json = (_QUANTITIES, ["-" + q for q in _QUANTITIES])  # [negative][index]; numbers in JSON
    quantity_enc = tuple([_avro_str(q) for q in table] for table in quantity_json)
    sub_json = [json.dumps(s) for s in subs]
    ce_headers = {"content-type": b"application/cloudevents+json; charset=UTF-8"}
    run_json = json.dumps(run_id)[1:-1]  # escaped, for inside JSON strings
    ce_head = '{"specversion":"1.0","type":"com.example.usage","source":"billing-load/' + run_json + '","id":'
    tenant_json, metric_json = json.dumps(tenant_id), json.dumps(metric)
    time_cache = [None, ""]
    window: list[tuple] = []
    n_subs, n_q = len(subs), len(_QUANTITIES)

    random_, getrandbits, sequential = rng.random, rng.getrandbits, ids == "sequential"
    unique_left, dup_left, bad_left = n_unique, n_dup, n_bad
    made_ce = 0
    client = UsageProducer(settings, topic=topic, linger_ms=50,
                           **{"queue.buffering.max.messages": 1_000_000})

    def send(key, value, headers, _produce=client.producer.produce, _topic=client.topic,
             _wait_and_send=client.send_encoded):
        try:
            _produce(_topic, value, key, headers=headers)
        except BufferError:  # the local queue is full: serve reports until there is room
            _wait_and_send(key, value, headers)

    started = time.perf_counter()
    next_report = started + 0.25
    chunk = 1 if 0 < rate < 100 else 256
    out = sys.stderr

    try:
        for i in range(count):
            # Sampling without replacement: exact counts, in random order (count - i is
            # what is left of the three together). A duplicate drawn before any unique
            # event becomes a unique one (one is left: duplicates imply uniques).
            r = random_() * (count - i)
            is_bad = dup_left <= r < dup_left + bad_left
            if r < dup_left and window:
                dup_left -= 1
                key, value, headers = window[int(random_() * len(window))]
                send(key, value, headers)
            elif is_bad and random_() < 0.5:
                bad_left -= 1
                send(None, b"\x00" + rng.randbytes(31), None)  # neither C3 01 nor {: undecodable
            else:
                negative = is_bad  # the other half of the bad ones: decodable, refused by ingest
                if negative:
                    bad_left -= 1
                else:
                    unique_left -= 1
                j = int(random_() * n_subs)
                qi = int(random_() * n_q)
                us = start_us + i
                eid = f"{run_id}-{i}" if sequential else str(uuid.UUID(int=getrandbits(128), version=4))
                if random_() < cloudevents:
                    made_ce += 1
                    ce_id = f"{run_json}-{i}" if sequential else eid
                    msg = (sub_keys[j], _cloudevent(ce_head, ce_id, _rfc3339(us, time_cache), sub_json[j],
                                                    tenant_json, metric_json, quantity_json[negative][qi]), ce_headers)
                elif fast is not None:
                    msg = (sub_keys[j], fast.encode(eid, sub_enc[j], quantity_enc[negative][qi], us),
                           AVRO_HEADERS)
                else:
                    msg = (sub_keys[j], slow.encode(eid, subs[j], quantity_json[negative][qi], us),
                           AVRO_HEADERS)
                send(*msg)
                if n_dup and not negative:
                    if len(window) < DUPLICATE_WINDOW:
                        window.append(msg)
                    else:
                        window[i % DUPLICATE_WINDOW] = msg
            if not i % chunk:
                client.poll(0)  # serve delivery reports
                now = time.perf_counter()
                if rate > 0:
                    ahead = started + i / rate - now
                    if ahead > 0:
                        time.sleep(ahead)
                if progress and now >= next_report:
                    next_report = now + 0.25
                    _progress(out, i, count, now - started)
        queued_s = time.perf_counter() - started
        if progress:
            _progress(out, count, count, queued_s, "flushing...")
        client.flush(flush_timeout_s)
        seconds = time.perf_counter() - started
        if progress:
            _progress(out, count, count, seconds, "done")
    finally:
        if progress:
            out.write("\n")
            out.flush()
    return {
        "produced": count, "unique": n_unique, "duplicates": n_dup, "bad": n_bad, "seconds": round(seconds, 3),
        "queued_seconds": round(queued_s, 3),
        "cloudevents": made_ce, "failed": len(client.errors), "events_per_s": round(count / seconds) if seconds else 0,
        "topic": client.topic, "run_id": run_id,
    }


def _cloudevent(head: str, event_id_json: str, ts: str, sub_json: str, tenant_json: str, metric_json: str,
                quantity: str) -> bytes:
    # every string comes JSON-escaped except the time and event_id_json (escaped run id + number)
    return (f'{head}"{event_id_json}","time":"{ts}","subject":{sub_json},"tenantid":{tenant_json},'
            f'"datacontenttype":"application/json","data":{{"metric":{metric_json},"quantity":{quantity}}}}}').encode()


def _progress(out, done: int, total: int, seconds: float, note: str = "") -> None:
    pct = 100.0 * done / total if total else 100.0
    rate = done / seconds if seconds > 0 else 0.0
    out.write(f"\rproduce-usage {done:>10,}/{total:,} {pct:5.1f}%  {rate:>10,.0f}/s  {seconds:6.1f}s {note}   ")
    out.flush()


# -------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=100_000, help="messages to produce (default 100000)")
    p.add_argument("--tenant-id", required=True, help="tenant UUID")
    subs = p.add_mutually_exclusive_group(required=True)
    subs.add_argument("--subscription-ids", help="comma-separated subscription ids")
    subs.add_argument("--subscriptions-file", type=Path, help="file with one subscription id per line")
    p.add_argument("--metric", default="api_calls", help="metric code (default api_calls)")
    p.add_argument("--duplicates", type=float, default=0.0, help="share re-sent with an earlier event's id (0..1)")
    p.add_argument("--bad", type=float, default=0.0, help="share of bad messages: random bytes / negative quantity")
    p.add_argument("--cloudevents", type=float, default=0.0, help="share sent as CloudEvents JSON instead of Avro")
    p.add_argument("--rate", type=float, default=0.0, help="events per second at most (0 = unlimited)")
    p.add_argument("--ids", choices=("sequential", "uuid4"), default="sequential",
                   help="event ids: <run>-<n> (default) or random UUIDv4")
    p.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable mix")
    p.add_argument("--topic", default=None, help="topic (default: the configured usage topic)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line on stderr")


def run_cli(settings, args: argparse.Namespace) -> int:
    if args.subscriptions_file is not None:
        subs = [line.strip() for line in args.subscriptions_file.read_text().splitlines() if line.strip()]
    else:
        subs = [s.strip() for s in args.subscription_ids.split(",") if s.strip()]
    try:
        summary = produce_load(settings, count=args.count, tenant_id=args.tenant_id, subscription_ids=subs,
                               metric=args.metric, duplicates=args.duplicates, bad=args.bad,
                               cloudevents=args.cloudevents, rate=args.rate, seed=args.seed,
                               progress=args.progress, topic=args.topic, ids=args.ids)
    except ValueError as exc:
        print(f"produce-usage: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    from billing.config import Settings

    parser = argparse.ArgumentParser(prog="python -m producers.load", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_cli(Settings(), parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

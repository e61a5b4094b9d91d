"""bench/consumer_cpu: the usage consumer's own CPU per event, in one process.

    .venv/bin/python -m bench.consumer_cpu                 # batches of 20,000, best of 7
    .venv/bin/python -m bench.consumer_cpu --rounds 11 --only decode

Builds one batch as `make bench-ingest` sends it (random UUIDv4 ids, 1,000 subscriptions,
quantities 1..100, 5% duplicates, 1% bad: half random bytes, half negative quantities) as
confluent-kafka `Message` objects, then runs the consumer's work over it part by part and
prints the CPU of this process per event (best of `--rounds`):

- `kafka`: turning the client's messages into ours (`KafkaThread._consume`'s loop, without
  the `consume()` call itself, which needs a broker);
- `passes`: the runner's passes over the batch (`BatchCommit`: offsets, sizes, headers,
  topics, the dead letters' flags and limit);
- `decode`: `usage_payloads.decode_batch`;
- `ingest`: `UsageStrategy.process` without its decoding (`usage_ingest.ingest`: prepare,
  then store, whose COPY asyncpg encodes here) against a PostgreSQL of its own, in a
  transaction rolled back (so every round stores the same events); PostgreSQL's CPU is
  its own processes', not counted.

Last line: `consumer_us_per_event=<sum> kafka=<a> passes=<b> decode=<c> ingest=<d>`."""
from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
import uuid

import asyncpg
from confluent_kafka import Message as KafkaMessage

from bench.ingest import setup_tenant
from bench.fixtures import own_postgres
from billing.config import Settings
from billing.devstack.postgres import LocalPostgres
from billing.runtime import tune_gc
from billing.services.plans import PlanCache
from billing.services.usage_ingest import UsageLimits
from billing.store.db import init_connection
from billing.store.migrations import migrate
from billing.store.usage import prepare_session
from consumers.batches import distinct_headers, next_offsets, partitions_of, topics_of
from consumers.dlq_limit import DlqLimit, DlqLimitState, dead_flags
from consumers.limits import split_too_large
from consumers.runner import Message
from consumers.strategy import detach
from consumers.usage import UsageStrategy
from consumers.usage_payloads import decode_batch
from producers.load import _QUANTITIES, _avro_encoder, _avro_str
from producers.usage_client import AVRO_HEADERS

TOPIC = "billing.usage.v1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_batch(tenant: str, subs: list[str], n: int, seed: int = 1) -> list[KafkaMessage]:
    """`n` client messages as `producers.load` makes them, over 8 partitions in runs."""
    rng = random.Random(seed)
    enc = _avro_encoder(tenant, "calls")
    assert enc is not None
    sub_enc = [_avro_str(s) for s in subs]
    q_enc = [[_avro_str(q) for q in _QUANTITIES], [_avro_str("-" + q) for q in _QUANTITIES]]
    headers = list(AVRO_HEADERS.items())
    start_us = time.time_ns() // 1000 - 60_000_000
    values: list[tuple[bytes | None, bytes, list | None]] = []
    for i in range(n):
        r = rng.random()
        if r < 0.05 and values:
            values.append(values[rng.randrange(len(values))])
        elif r < 0.055:
            values.append((None, b"\x00" + rng.randbytes(31), None))
        else:
            j = rng.randrange(len(subs))
            neg = 1 if r < 0.06 else 0
            eid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            values.append((subs[j].encode(), enc.encode(eid, sub_enc[j], q_enc[neg][rng.randrange(100)],
                                                         start_us + i), headers))
    per = n // 8 + 1
    return [KafkaMessage(topic=TOPIC, partition=i // per, offset=1000 + i, key=k, value=v, headers=h,
                         timestamp=(1, start_us // 1000)) for i, (k, v, h) in enumerate(values)]


def detach_all(fetched: list[KafkaMessage]) -> list[Message]:
    """`KafkaThread._consume` after its `consume()` call, every partition assigned."""
    return detach(fetched, {(TOPIC, p) for p in range(16)}, lambda m: None)


def runner_passes(batch: list[Message], dead, limit: DlqLimitState) -> None:
    """What `BatchCommit` and the runner do over every message of a batch."""
    topics = topics_of(batch)
    list(distinct_headers(batch))
    offsets = next_offsets(batch)
    partitions_of(batch)
    work, too_large = split_too_large(list(batch), None)
    flags = dead_flags(batch, dead)
    limit.judge(flags)
    assert topics and offsets and work


def best(samples: list[float], n: int) -> float:
    return min(samples) / n * 1e6


async def run(pg: LocalPostgres, n: int, rounds: int, only: str | None) -> str:
    settings = Settings(database_url=pg.app_url, worker_database_url=pg.worker_url, admin_database_url=pg.admin_url)
    await migrate(settings.admin_database_url, settings.migrations_dir)
    tenant, subs = await setup_tenant(settings, 1000)
    conn = await asyncpg.connect(settings.worker_database_url)
    await init_connection(conn)
    await prepare_session(conn)
    fetched = build_batch(tenant, subs, n)
    strategy = UsageStrategy(UsageLimits(), PlanCache())
    limit = DlqLimitState(DlqLimit())
    tune_gc()
    times: dict[str, list[float]] = {"kafka": [], "passes": [], "decode": [], "ingest": []}
    clock = time.process_time
    dead: list = []
    for _ in range(rounds + 1):  # the first round warms caches up, and is dropped
        gc.collect()
        t0 = clock()
        batch = detach_all(fetched)
        t1 = clock()
        decoded = decode_batch(batch)
        t2 = clock()
        strategy._ahead = [(batch, decoded)]
        tr = conn.transaction()
        await tr.start()
        result = await strategy.process(conn, batch)
        t3 = clock()
        await tr.rollback()
        dead = result.dead_letters
        t4 = clock()
        runner_passes(batch, dead, limit)
        t5 = clock()
        for k, dt in (("kafka", t1 - t0), ("decode", t2 - t1), ("ingest", t3 - t2), ("passes", t5 - t4)):
            times[k].append(dt)
        del batch, decoded, result
    await conn.close()
    for k in times:
        times[k] = times[k][1:]
    parts = {k: best(v, n) for k, v in times.items() if only is None or k == only}
    log(f"dead letters per batch: {len(dead)}; rounds {rounds}; per part (us/event), all rounds: "
        + "; ".join(f"{k} " + " ".join(f"{x / n * 1e6:.2f}" for x in v) for k, v in times.items()))
    return f"consumer_us_per_event={sum(parts.values()):.2f} " + " ".join(f"{k}={v:.2f}" for k, v in parts.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=("kafka", "passes", "decode", "ingest"))
    args = parser.parse_args()
    with own_postgres("bench-consumer-cpu-") as pg:
        print(asyncio.run(run(pg, args.batch, args.rounds, args.only)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

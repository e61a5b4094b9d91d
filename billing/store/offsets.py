"""Kafka consumer offsets kept in PostgreSQL (table `consumer_offsets`).

A row holds the *next* offset to read for (consumer group, topic, partition), i.e. the
last processed offset + 1, written in the same transaction as the effects of the messages
before it. Not a tenant table (one partition carries many tenants), so no row-level
security applies; the worker role (`billing_worker`, the consumers') may select, insert and
update, the API role nothing (migration 016).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import asyncpg

TopicPartition = tuple[str, int]

_LOAD = """
select partition, next_offset
  from consumer_offsets
 where consumer_group = $1 and topic = $2 and partition = any($3::int[])
"""

_LOCK = """
select o.topic, o.partition, o.next_offset
  from consumer_offsets o
  join unnest($2::text[], $3::int[]) as t(topic, partition) using (topic, partition)
 where o.consumer_group = $1
 for update of o
"""

# One statement for the whole batch. With `checked` false a row is upserted as given;
# with `checked` true the existing row is only moved when it still holds `expected`
# (null: the row must not exist yet). A row left unchanged is missing from RETURNING,
# which is how the caller learns that someone else stored an offset in the meantime.
# ON CONFLICT DO UPDATE always sees the latest committed row version (and waits for a
# concurrent writer of the same row), so two writers of one partition cannot both win.
_STORE = """
with input as (
    select * from unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bool[])
        as t(topic, partition, next_offset, expected, checked)
)
insert into consumer_offsets as c (consumer_group, topic, partition, next_offset)
select $1, topic, partition, next_offset from input
on conflict (consumer_group, topic, partition) do update
   set next_offset = excluded.next_offset, updated_at = now()
 where exists (
        select 1 from input i
         where i.topic = excluded.topic and i.partition = excluded.partition
           and (not i.checked or i.expected is not distinct from c.next_offset))
returning c.topic, c.partition
"""


async def load(conn: asyncpg.Connection, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """Stored next offsets of these partitions; a partition never stored is absent."""
    rows = await conn.fetch(_LOAD, group, topic, list(partitions))
    return {r["partition"]: r["next_offset"] for r in rows}


async def lock(conn: asyncpg.Connection, group: str,
               partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """Lock the existing rows of these partitions until the transaction ends and return
    their next offsets (a partition without a row is absent and nothing is locked)."""
    keys = list(partitions)
    rows = await conn.fetch(_LOCK, group, [t for t, _ in keys], [p for _, p in keys])
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def store(conn: asyncpg.Connection, group: str, offsets: Mapping[TopicPartition, int],
                expected: Mapping[TopicPartition, int | None] | None = None) -> set[TopicPartition]:
    """Upsert the next offsets (last processed + 1) of a batch, in one statement.

    `expected`, when given, fences the write: for each (topic, partition) named in it the
    row is only written if it still holds that value (None: no row yet). Returns the
    partitions that were NOT written because the stored value differed; the caller must
    then roll its transaction back. Partitions absent from `expected` are written as is.
    """
    if not offsets:
        return set()
    keys = list(offsets)
    expected = expected or {}
    rows = await conn.fetch(
        _STORE, group,
        [t for t, _ in keys], [p for _, p in keys], [offsets[k] for k in keys],
        [expected.get(k) for k in keys], [k in expected for k in keys],
    )
    written = {(r["topic"], r["partition"]) for r in rows}
    return set(keys) - written

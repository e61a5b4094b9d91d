"""The runner replaces a Kafka client that lost its partitions and never rejoined its group.

The chaos suite saw it after a broker restart: the billing consumer's session timed out,
its partitions were lost, and although it kept polling it never sent JoinGroup again, so
its group stayed empty and no billing run was executed any more. Here the wedge itself is
not reproducible on demand; what is tested is the way out: past `rejoin_timeout_s` without
an assignment since the loss, a new client joins and consumption goes on, exactly once."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.integration.test_consumer_runner import (
    ToyStrategy, _eq, effect_count, effects, eventually, make_runner, new_topic, pool, effects_table, produce,
    stop, stored_offsets,
)

pytestmark = pytest.mark.integration
__all__ = ["pool", "effects_table"]  # fixtures, imported for pytest


async def test_a_client_that_lost_its_partitions_and_never_rejoined_is_replaced(migrated, pool):
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [(p, f"a-{p}-{i}") for p in range(3) for i in range(10)])
    runner = make_runner(migrated, pool, topic, group, ToyStrategy(), rejoin_timeout_s=1.0)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _eq(effect_count(pool, topic), 30), what="30 effects")
        first = runner._kafka._consumer
        # What the wedge looks like to the runner: partitions lost a while ago, no assignment since.
        runner._kafka.lost_at = time.monotonic() - 5
        await eventually(lambda: _eq(asyncio.sleep(0, runner._kafka._consumer is not first), True), what="a new client")
        produce(migrated, topic, [(p, f"b-{p}-{i}") for p in range(3) for i in range(10)])
        await eventually(lambda: _eq(effect_count(pool, topic), 60), timeout_s=60, what="60 effects")
        assert runner._kafka.lost_at is None  # the new client was assigned
    finally:
        await stop(runner, task)
    rows = await effects(pool, topic)
    assert len(rows) == 60 and len(set(rows)) == 60
    assert await stored_offsets(pool, group, topic) == {0: 20, 1: 20, 2: 20}

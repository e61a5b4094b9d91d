"""A committed consumer batch (consumers/commit.py) sends the pool's connection reset with its
COMMIT, as `tenant_tx` does (store/db.TenantConnection): releasing the connection sends
nothing more, one round trip fewer per batch on the batch's serial path; a batch that rolls
back still gets the full reset on release."""
from __future__ import annotations

import uuid

import pytest

from billing.store.db import Database
from consumers.commit import BatchCommit
from consumers.dlq_limit import DlqLimit, DlqLimitState
from consumers.strategy import BatchResult, Message


class _Dirty:
    """Leaves a session setting behind (the reset's RESET ALL clears it), then fails if asked."""

    def __init__(self) -> None:
        self.fail = False

    async def process(self, conn, batch):
        await conn.execute("select set_config('application_name', 'left-by-the-batch', false)")
        if self.fail:
            raise RuntimeError("the batch fails")
        return BatchResult()


@pytest.fixture
async def one_connection(migrated):
    db = await Database.connect(migrated.worker_database_url, min_size=1, max_size=1)
    yield db
    await db.close()


async def test_the_reset_travels_with_the_commit(one_connection):
    strategy = _Dirty()
    commit = BatchCommit(one_connection.pool, f"reset-{uuid.uuid4().hex[:8]}", strategy, dlq=None,
                         limit=DlqLimitState(DlqLimit(max_bad_share=1.0)), max_message_bytes=None)
    sent: list[str] = []
    async with one_connection.pool.acquire() as conn:
        conn.add_query_logger(lambda record: sent.append(record.query))
    topic = f"t-{uuid.uuid4().hex[:8]}"

    done = await commit([Message(topic, 0, 5, None, b"x", {}, None)], {})
    assert done.offsets == {(topic, 0): 6}
    assert sent[-1].startswith("COMMIT;") and "RESET ALL" in sent[-1]  # nothing sent after it on release
    async with one_connection.pool.acquire() as conn:
        assert await conn.fetchval("select current_setting('application_name')") != "left-by-the-batch"

    strategy.fail = True
    with pytest.raises(RuntimeError):
        await commit([Message(topic, 0, 6, None, b"x", {}, None)], {(topic, 0): 6})
    assert "RESET ALL" in sent[-1] and not sent[-1].startswith("COMMIT")  # the full reset, on release
    async with one_connection.pool.acquire() as conn:
        assert await conn.fetchval("select current_setting('application_name')") != "left-by-the-batch"
        assert await conn.fetchval("select next_offset from consumer_offsets where consumer_group = $1",
                                   commit._group) == 6

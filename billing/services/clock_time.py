""""Now" for a subscription: the wall clock, or the frozen time of the test clock it lives on.

Every service that takes the current time for a subscription (its lifecycle calls, the
catch-up close of an ended period, its invoice requests, usage validation) takes it from
here, so a subscription on a test clock sees only its clock's time (docs/time.md, "Test clocks").
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

from billing.services.errors import FailedPrecondition, NotFound
from billing.store import test_clocks as store

#: The header that marks an invoice request made for a test-clock subscription.
TEST_CLOCK_HEADER = "billing-test-clock"


def wall_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class SubscriptionTime:
    """The time a subscription lives on: `now`, and the test clock it comes from (None: real time)."""

    now: datetime
    test_clock_id: uuid.UUID | None = None
    advancing: bool = False  # its clock is being advanced: it takes no change until that completes

    @property
    def issued_at(self) -> datetime | None:
        """When its invoice requests are issued: the clock's time on a clock; None (the wall clock) otherwise."""
        return self.now if self.test_clock_id is not None else None


def real_time() -> SubscriptionTime:
    return SubscriptionTime(wall_now())


async def for_subscription(conn: asyncpg.Connection, tenant_id: uuid.UUID, sub_id: uuid.UUID) -> SubscriptionTime:
    """THE "now" of one subscription, read in the caller's transaction."""
    row = await store.subscription_clock(conn, tenant_id, sub_id)
    if row is None:
        return real_time()
    return SubscriptionTime(row["frozen_time"], row["test_clock_id"], row["status"] == "advancing")


async def for_new_subscription(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                               clock_id: uuid.UUID) -> SubscriptionTime:
    """The time of a subscription created on `clock_id` (its row locked against an advance
    starting meanwhile); NotFound, or refused while the clock is advancing."""
    row = await store.get(conn, tenant_id, clock_id, for_update=True)
    if row is None:
        raise NotFound("test clock", str(clock_id))
    refuse_advancing(row["status"] == "advancing", clock_id)
    return SubscriptionTime(row["frozen_time"], clock_id)


def refuse_advancing(advancing: bool, clock_id: uuid.UUID | None) -> None:
    """Nothing changes on a clock while its advance's run bills it: that run's result would
    depend on what the change raced."""
    if advancing:
        raise FailedPrecondition(f"test clock {clock_id} is advancing: retry when GetTestClock shows it ready",
                                 reason="TEST_CLOCK_ADVANCING")


def clock_headers(test_clock_id: uuid.UUID | str | None) -> dict[str, str]:
    return {TEST_CLOCK_HEADER: str(test_clock_id)} if test_clock_id else {}

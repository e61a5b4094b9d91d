"""The usage consumer: Avro or CloudEvents JSON from `billing.usage.v1`, aggregated in batches.

One runner batch is one transaction: the raw events and the totals of every tenant in the
batch, and the Kafka offsets. Bad events (undecodable, unknown tenant or subscription,
metric not on the plan, bad quantity, out of the time window) are dead-lettered with the
reason; they never stop the stream, and a good event after a bad one still counts.
"""
from __future__ import annotations

import time

import asyncpg

from billing.services import usage
from consumers.runner import BatchResult, DeadLetter, Message
from consumers.usage_payloads import decode_batch


class UsageStrategy:
    def __init__(self, limits: usage.UsageLimits | None = None):
        self.limits = limits or usage.UsageLimits()
        self.plans = usage.PlanCache()

    async def process(self, conn: asyncpg.Connection, batch: list[Message]) -> BatchResult:
        events, positions, dead = decode_batch(batch)
        result = await usage.ingest(conn, events, now_us=time.time_ns() // 1000, limits=self.limits,
                                    plans=self.plans)
        for r in result.rejected:
            dead.append(DeadLetter(batch[positions[r.index]], r.reason, r.detail))
        return BatchResult(dead_letters=dead, counters={
            "received": len(batch), "inserted": result.inserted, "duplicates": result.duplicates,
            "late": result.late,
        })

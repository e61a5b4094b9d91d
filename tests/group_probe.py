"""The group commit's transactions as the tests watch them: how many of a tenant ran at once."""
from __future__ import annotations

import asyncio

from billing.services.usage_record import GroupCommit


def watch_groups_in_flight(monkeypatch, hold_s: float = 0.02) -> list[int]:
    """Patches GroupCommit._in_tx to count the group transactions running at once, each held
    `hold_s` first (long enough for the next calls to gather behind it); returns a one-item
    list holding the most seen at once so far."""
    real = GroupCommit._in_tx
    running, most = [0], [0]

    async def counted(self, *args):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            await asyncio.sleep(hold_s)
            return await real(self, *args)
        finally:
            running[0] -= 1

    monkeypatch.setattr(GroupCommit, "_in_tx", counted)
    return most

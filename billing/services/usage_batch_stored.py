"""RecordUsageBatch's outcome as kept with its request_id, and read back for a replay.

A replay carries the same events as the first request (its digest matched), so the kept
form leaves out what the request holds: the event ids. Kept per batch: the periods once
each, which period each recorded event counts in (runs over the events in order: a batch's
events mostly share one), the indexes of the duplicates, the refused events' errors. A
batch of 1,000 ordinary events keeps about a hundred bytes instead of ~47 kB (which
PostgreSQL compressed and stored out of line on every batch). The two forms kept before
(every event's id in it) are still read.
"""
from __future__ import annotations

from datetime import datetime

from billing.services.usage import Recorded

# The form of each kept outcome: "runs" marks this one.
_RUNS = "runs"


def stored(done) -> dict:
    """`done`: a usage_batch.BatchOutcome."""
    runs: list[list[int]] = []
    errors = done.errors
    last = -2
    for i, p in enumerate(done.period):
        if i in errors:
            continue
        if p == last:
            runs[-1][1] += 1
        else:
            runs.append([p, 1])
            last = p
    dup = done.duplicate
    return {"periods": [[s.isoformat(), e.isoformat()] for s, e in done.periods], "n": len(dup), _RUNS: runs,
            "duplicates": [i for i, d in enumerate(dup) if d],
            "errors": [[i, e.code, e.reason, e.field, e.description] for i, e in sorted(errors.items())]}


def from_stored(kept: dict, event_ids: list[str] | None = None):
    """The BatchOutcome kept; `event_ids`: the request's, per index (the current form needs them)."""
    from billing.services.usage_batch import BatchOutcome, EventError, EventOutcome

    if _RUNS in kept:
        if event_ids is None or len(event_ids) != kept["n"]:
            raise ValueError("a kept batch outcome is read with its request's event ids")
        n = kept["n"]
        periods = [(datetime.fromisoformat(s), datetime.fromisoformat(e)) for s, e in kept["periods"]]
        errors = {i: EventError(code, reason, field, description) for i, code, reason, field, description
                  in kept["errors"]}
        period = [-1] * n
        it = iter(i for i in range(n) if i not in errors)
        for p, count in kept[_RUNS]:
            for _ in range(count):
                period[next(it)] = p
        duplicate = [False] * n
        for i in kept["duplicates"]:
            duplicate[i] = True
        return BatchOutcome.of_columns(list(event_ids), duplicate, period, periods, errors)
    if "events" in kept:  # every event's id in it, the periods numbered
        periods = [(datetime.fromisoformat(s), datetime.fromisoformat(e)) for s, e in kept["periods"]]
        out = []
        for i, d in enumerate(kept["events"]):
            if isinstance(d, dict):
                out.append(EventOutcome(i, error=EventError(d["code"], d["reason"], d["field"], d["description"])))
            else:
                out.append(EventOutcome(i, Recorded(d[0], d[1], *periods[d[2]])))
        return BatchOutcome(out)
    out = []
    for d in kept["outcomes"]:  # the first form: a dict per event
        if "code" in d:
            out.append(EventOutcome(d["i"], error=EventError(d["code"], d["reason"], d["field"], d["description"])))
        else:
            out.append(EventOutcome(d["i"], Recorded(d["event_id"], d["duplicate"],
                                                     datetime.fromisoformat(d["period_start"]),
                                                     datetime.fromisoformat(d["period_end"]))))
    return BatchOutcome(out)

"""The short path of usage ingestion, per event (billing/services/usage_ingest.py): in a module
of its own, with no I/O, so that `make install` can compile it (billing/native.py).

`take` runs over a tenant's events in order: an event of a subscription the short path may
take (`fast`, per subscription text: the window of times it accepts, its metrics), with no
properties, a well-formed event id and a non-negative decimal quantity, becomes a staging
row at once; any other is handed to `slow` (the full chain of checks, which words the
rejection) at its place, so the rows stay in the events' order (the first row of an event id
in COPY order is the one stored)."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

MAX_EVENT_ID = 200
# A non-negative exact decimal: up to 15 digits before the point and 12 after. ASCII digits
# only: without re.ASCII, \d also matches "１２" (full-width) or "١٢" (Arabic-Indic), which
# PostgreSQL's numeric refuses, failing the whole batch instead of the one event.
QUANTITY = re.compile(r"\d{1,15}(?:\.\d{1,12})?", re.ASCII)


def take(events: Sequence[Any], indexes: Sequence[int], fast: dict[str, Any], rows: list[Any],
         row_indexes: list[int], periods: dict[int, Any] | None, slow: Callable[[int, Any], None]) -> None:
    """`events[i]` for each i of `indexes`: a row (and its index, and its period when
    `periods` is given) for the short path's events, `slow(i, event)` for the others.
    An event is any 7-tuple in `UsageEvent`'s order; a `fast` entry is usage_ingest's `_Fast`."""
    quantities: dict[str, bool] = {}  # quantity text -> a non-negative decimal? (the values repeat)
    quantity_ok = QUANTITY.fullmatch
    for i in indexes:
        e = events[i]
        event_id, _, sub_text, metric, quantity, t, props = e
        f = fast.get(sub_text)
        if f is not None and f[1] <= t < f[2] and metric in f[3] and not props \
                and event_id and len(event_id) <= MAX_EVENT_ID and "\x00" not in event_id:
            ok = quantities.get(quantity)
            if ok is None:
                ok = quantities[quantity] = quantity_ok(quantity) is not None
            if ok:
                rows.append((event_id, f[0], metric, quantity, t, f[5], f[6], False, None))
                row_indexes.append(i)
                if periods is not None:
                    periods[i] = f[4]
                continue
        slow(i, e)

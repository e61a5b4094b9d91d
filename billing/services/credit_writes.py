"""What a billed period's credits write: ledger rows (`store.credits.Entry`) and the events
credit.applied, credit.depleted and credit.expired, collected with the chunk's other rows
and written in its transaction, with the invoice request that carries the credit lines."""
from __future__ import annotations

import json
import uuid

from billing.domain.credits import CreditOutcome
from billing.domain.events import EventType
from billing.domain.invoicing import ClosedPeriod
from billing.domain.money import decimal_to_str
from billing.domain.subscriptions import Subscription
from billing.services import events
from billing.services.context import Caller
from billing.store.credits import Entry


def add(entries: list[Entry], event_rows: list[tuple], caller: Caller, run_id: uuid.UUID, sub: Subscription,
        closed: ClosedPeriod, outcome: CreditOutcome) -> None:
    request = closed.invoice_request_id
    common = {"invoice_request_id": str(request), "currency": closed.currency}
    for a in outcome.applied:
        entries.append(Entry(a.grant_id, "applied", a.amount, sub.id, request, run_id, closed.period_end))
        data = {**common, "grant_id": str(a.grant_id), "amount": decimal_to_str(a.amount),
                "remaining": decimal_to_str(a.remaining)}
        _event(event_rows, caller, sub, EventType.CREDIT_APPLIED, closed, f"credit:{a.grant_id}:{request}", data)
        if a.remaining <= 0:
            _event(event_rows, caller, sub, EventType.CREDIT_DEPLETED, closed, f"credit:{a.grant_id}:{request}",
                   data)
    for e in outcome.expired:
        entries.append(Entry(e.grant_id, "expired", e.amount, sub.id, None, run_id, e.at))
        _event(event_rows, caller, sub, EventType.CREDIT_EXPIRED, closed, f"credit-expiry:{e.grant_id}",
               {**common, "grant_id": str(e.grant_id), "amount": decimal_to_str(e.amount),
                "expires_at": e.at.isoformat()}, occurred_at=e.at)


def _event(rows: list[tuple], caller: Caller, sub: Subscription, event_type: str, closed: ClosedPeriod, cause: str,
           data: dict[str, str], occurred_at=None) -> None:
    _, key, payload, headers = events.build(
        caller, event_type=event_type, subscription_id=str(sub.id), customer_id=sub.customer_id,
        occurred_at=occurred_at or closed.period_end, cause=cause, data=data)
    rows.append((events.STREAM, key, payload, json.dumps(headers)))

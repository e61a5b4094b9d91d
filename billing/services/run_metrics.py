"""What one chunk of billing did (counts, totals, failures) and its metrics, observed once
the chunk's transaction committed."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from billing.ops import metrics

_ZERO = Decimal(0)


@dataclass
class ChunkOutcome:
    due: int = 0
    billed: int = 0
    skipped: int = 0
    invoices: int = 0  # invoice requests written (a subscription may close several periods)
    # Of `totals`, what requests with a negative total (a credit larger than the charges)
    # added, as a positive amount: a Prometheus counter cannot go down (observe_invoices).
    credited: dict[str, Decimal] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # {"subscription_id", "reason"}
    totals: dict[str, Decimal] = field(default_factory=dict)

    def add_invoice(self, currency: str, total: Decimal) -> None:
        """One invoice request written: its total into the run's totals (and the metrics')."""
        self.invoices += 1
        self.totals[currency] = self.totals.get(currency, _ZERO) + total
        if total < 0:
            self.credited[currency] = self.credited.get(currency, _ZERO) - total

    def fail(self, subscription_id: object, reason: str) -> None:
        self.failures.append({"subscription_id": str(subscription_id), "reason": reason[:1000]})


def observe_chunk(chunk: ChunkOutcome) -> None:
    metrics.BILLING_SUBSCRIPTIONS.labels("billed").inc(chunk.billed)
    metrics.BILLING_SUBSCRIPTIONS.labels("skipped").inc(chunk.skipped)
    metrics.BILLING_SUBSCRIPTIONS.labels("failed").inc(len(chunk.failures))
    observe_invoices("run", chunk)


def observe_closed(chunk: ChunkOutcome) -> None:
    """Count the invoice requests of periods a change closed (`close_ended_periods`), once
    the change committed: a change refused after the close counts nothing."""
    observe_invoices("change", chunk)


def observe_change_invoice(currency: str, total: Decimal) -> None:
    """Count the invoice request a change wrote itself (an immediate cancel's final one, a
    proration invoiced now), once the change committed."""
    chunk = ChunkOutcome()
    chunk.add_invoice(currency, total)
    observe_invoices("change", chunk)


def observe_invoices(source: str, chunk: ChunkOutcome) -> None:
    """The invoice requests of a committed chunk, by who wrote them (run, change), and their
    totals: every invoice request is counted here once, whatever wrote it. Requests with a
    negative total go to the credited counter as a positive amount, the others to the
    billed one, so billed minus credited is the net amount invoiced."""
    if chunk.invoices:
        metrics.INVOICE_REQUESTS.labels(source).inc(chunk.invoices)
    for currency, amount in chunk.totals.items():
        credit = chunk.credited.get(currency, _ZERO)
        metrics.BILLING_AMOUNT.labels(currency).inc(float(amount + credit))
        if credit:
            metrics.BILLING_CREDITED.labels(currency).inc(float(credit))


def observe_finished(row) -> None:
    metrics.BILLING_RUNS.labels(row["status"]).inc()
    if row["started_at"] and row["finished_at"]:
        metrics.BILLING_RUN_SECONDS.observe((row["finished_at"] - row["started_at"]).total_seconds())

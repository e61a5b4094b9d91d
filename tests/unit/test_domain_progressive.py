"""Progressive billing (billing/domain/progressive.py, docs/billing.md "Progressive billing"):
for any usage stream and thresholds, the threshold invoices and the period's final invoice
sum to what one invoice would have charged, to the minor unit."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from billing.domain.invoice_assembly import Discount, DiscountKind
from billing.domain.invoicing import close_period
from billing.domain.lifecycle import SubscriptionStatus as S
from billing.domain.plans import Aggregation, BillingTiming, IntervalUnit, PlanSpec, PricingModel, Tier, UsageCharge
from billing.domain.pricing import PeriodUsage, total
from billing.domain.progressive import PROGRESSIVE_BILLED, running_amount, running_lines, threshold_invoice
from billing.domain.subscriptions import Subscription

TENANT = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
START = datetime(2026, 9, 1, tzinfo=timezone.utc)
END = datetime(2026, 10, 1, tzinfo=timezone.utc)
_TIERS = (Tier(D(100), D("0.0125"), D(0)), Tier(D(1000), D("0.011"), D("1.25")), Tier(None, D("0.0037"), D(0)))
CHARGES = [
    UsageCharge("calls", Aggregation.SUM, PricingModel.PER_UNIT, D("0.0033"), None, ()),
    UsageCharge("calls", Aggregation.SUM, PricingModel.PER_UNIT, D("0.015"), None, (), max_amount=D("7.5")),
    UsageCharge("calls", Aggregation.SUM, PricingModel.GRADUATED, None, None, _TIERS),
    UsageCharge("calls", Aggregation.SUM, PricingModel.VOLUME, None, None, _TIERS),
    UsageCharge("calls", Aggregation.SUM, PricingModel.PACKAGE, D("0.333"), D(7), ()),
]
SECOND = [
    UsageCharge("seats", Aggregation.MAX, PricingModel.PER_UNIT, D("4.99"), None, ()),
    UsageCharge("seats", Aggregation.LATEST, PricingModel.PER_UNIT, D("1.337"), None, ()),  # may fall
    UsageCharge("seats", Aggregation.COUNT, PricingModel.PER_UNIT, D("0.0015"), None, ()),
]


def _sub() -> Subscription:
    return Subscription(id=uuid.UUID(int=7), customer_id="c", plan_id=uuid.UUID(int=1), status=S.ACTIVE,
                        created_at=START, start_at=START, billing_anchor=START, trial_days=0,
                        current_period_start=START, current_period_end=END)


def _fold(usage: PeriodUsage | None, q: D) -> PeriodUsage:
    """What the ingest path folds into usage_totals for one event."""
    if usage is None or usage.event_count is None:
        return PeriodUsage(q, 1, q, q)
    assert usage.quantity_sum is not None and usage.quantity_max is not None
    return PeriodUsage(usage.quantity_sum + q, usage.event_count + 1, max(usage.quantity_max, q), q)


quantities = st.decimals(min_value=0, max_value=3000, places=3, allow_nan=False, allow_infinity=False)
batches = st.lists(st.lists(st.tuples(st.sampled_from(["calls", "seats"]), quantities), min_size=1, max_size=6),
                   min_size=1, max_size=8)
thresholds = st.lists(st.tuples(st.decimals(min_value=0, max_value=60, places=2), st.booleans()), max_size=5)
discounts = st.lists(st.one_of(
    st.builds(lambda v: Discount("pct", DiscountKind.PERCENTAGE, v), st.decimals(min_value=1, max_value=100, places=1)),
    st.builds(lambda v: Discount("fix", DiscountKind.FIXED_AMOUNT, v), st.decimals(min_value=1, max_value=40, places=2)),
), max_size=2)


@settings(max_examples=400, deadline=None)
@given(calls=st.sampled_from(CHARGES), seats=st.sampled_from(SECOND), batches=batches, thresholds=thresholds,
       currency=st.sampled_from(["EUR", "JPY", "KWD"]), fee=st.sampled_from([D(0), D("9.99")]),
       timing=st.sampled_from(list(BillingTiming)), commitment=st.sampled_from([D(0), D("25"), D("333.33")]),
       discounts=discounts)
def test_threshold_invoices_and_the_final_one_sum_to_the_single_invoice(calls, seats, batches, thresholds, currency,
                                                                          fee, timing, commitment, discounts):
    plan = PlanSpec("p", "P", "", currency, IntervalUnit.MONTH, 1, fee, timing, 0, (calls, seats),
                    minimum_commitment=commitment)
    usage: dict[str, PeriodUsage] = {}
    crossed: set[int] = set()
    billed, requests = D(0), []
    for batch in batches:  # one usage batch: fold, then check, as services/amount_thresholds does
        for metric, q in batch:
            usage[metric] = _fold(usage.get(metric), q)
        lines = running_lines(plan, usage, START, END)
        amount = total(lines)
        assert amount == running_amount(plan, usage, START, END)
        for n, (value, invoicing) in sorted(enumerate(thresholds), key=lambda t: (t[1][0], t[0])):
            if n in crossed or amount < value:
                continue
            crossed.add(n)
            if invoicing:
                charged = threshold_invoice(lines, billed, START, END)
                if charged:
                    assert total(charged) > 0
                    requests.append(total(charged))
                    billed += total(charged)
    single = close_period(TENANT, _sub(), plan, usage, discounts=discounts)
    final = close_period(TENANT, _sub(), plan, usage, discounts=discounts, progressive_billed=billed)
    assert sum(requests, D(0)) + final.total == single.total  # exact, to the minor unit
    if billed:
        assert final.lines[:-1] == single.lines and final.lines[-1].kind == PROGRESSIVE_BILLED
        assert final.lines[-1].amount == -billed
    else:
        assert final.lines == single.lines


def test_a_second_threshold_invoice_charges_only_what_came_since_the_first():
    plan = PlanSpec("p", "P", "", "EUR", IntervalUnit.MONTH, 1, D(0), BillingTiming.IN_ARREARS, 0, (CHARGES[0],))
    first = threshold_invoice(running_lines(plan, {"calls": PeriodUsage(D(1000), 1, D(1000), D(1000))}, START, END),
                              D(0), START, END)
    assert total(first) == D("3.30")  # 1000 * 0.0033
    lines = running_lines(plan, {"calls": PeriodUsage(D(2500), 2, D(1500), D(1500))}, START, END)
    second = threshold_invoice(lines, total(first), START, END)
    # 2500 * 0.0033 = 8.25, less the 3.30 charged: 4.95
    assert [(ln.kind, ln.amount) for ln in second] == [("usage", D("8.25")), (PROGRESSIVE_BILLED, D("-3.30"))]
    assert total(second) == D("4.95")
    # nothing new to charge: no invoice
    assert threshold_invoice(lines, D("8.25"), START, END) == ()

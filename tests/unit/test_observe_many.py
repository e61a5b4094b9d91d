"""metrics.observe_many: n observations in one step record what n calls of observe record."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from billing.ops.metrics import observe_many


def _samples(h: Histogram) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in h.collect() for s in m.samples
            if not s.name.endswith("_created")}


@pytest.mark.parametrize("amount, count", [(0.0, 1), (0.003, 1000), (0.25, 7), (2.6, 3), (5000.0, 12)])
def test_the_same_samples_as_one_call_per_observation(amount, count):
    buckets = (0.01, 0.25, 1, 5, 300)
    many = Histogram("many", "", buckets=buckets, registry=CollectorRegistry())
    one_by_one = Histogram("many", "", buckets=buckets, registry=CollectorRegistry())
    observe_many(many, amount, count)
    for _ in range(count):
        one_by_one.observe(amount)
    assert _samples(many) == pytest.approx(_samples(one_by_one))


def test_no_observation_records_nothing():
    h = Histogram("none", "", buckets=(1,), registry=CollectorRegistry())
    observe_many(h, 0.5, 0)
    assert all(v == 0 for v in _samples(h).values())

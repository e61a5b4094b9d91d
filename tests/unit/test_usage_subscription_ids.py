"""Subscription texts parsed to UUIDs once per process (billing/services/usage_ingest.py):
the same answer as parsing each time, and nothing kept for a text longer than a UUID's."""
from __future__ import annotations

import uuid

from billing.services import usage_ingest


def test_texts_parse_as_uuid_would_and_long_ones_are_not_kept():
    sub = uuid.uuid4()
    long_text = "x" * 10_000
    texts = {str(sub), str(sub).upper(), "{" + str(sub) + "}", "not-a-uuid", "", long_text}
    usage_ingest._uuid_of.cache_clear()
    for _ in range(2):  # parsed, then from the map
        got = usage_ingest._subscription_ids(texts)
        assert got == {str(sub): sub, str(sub).upper(): sub, "{" + str(sub) + "}": sub, "not-a-uuid": None,
                       "": None, long_text: None}
    kept = usage_ingest._uuid_of.cache_info()
    assert kept.currsize == len(texts) - 1 and kept.hits == len(texts) - 1  # every text but the long one

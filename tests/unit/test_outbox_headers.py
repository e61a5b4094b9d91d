"""billing.store.outbox._splice: the writer's trace headers merged into a row's headers as
JSON text, the way PostgreSQL's `||` merged them before (the right side wins)."""
from __future__ import annotations

import json

from hypothesis import given, strategies as st

from billing.store.outbox import _splice

_text = st.text(min_size=0, max_size=12)
_objects = st.dictionaries(_text, _text, max_size=5)


@given(row=_objects, trace=st.dictionaries(_text, _text, min_size=1, max_size=3),
       indent=st.sampled_from([None, 2]))
def test_splice_is_the_merge_of_the_two_objects(row, trace, indent):
    merged = _splice(json.dumps(row, indent=indent), json.dumps(trace)[1:])
    assert json.loads(merged) == {**row, **trace}


def test_splice_of_text_that_is_not_an_object_text_still_merges():
    assert json.loads(_splice('  {"a": "1"}\n', '"traceparent": "t"}')) == {"a": "1", "traceparent": "t"}
    assert json.loads(_splice("{}", '"traceparent": "t"}')) == {"traceparent": "t"}

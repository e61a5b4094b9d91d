"""Issue #8 item 2: property-based fuzzing of every RPC over the real server.

Requests are generated from the proto descriptors, so a field or an RPC added later is
fuzzed without touching this file. Each string, number, enum, timestamp, map and list
field gets either a plausible value (ids of the tenant's real objects, valid codes and
decimals) or an abusive one (huge and control-character strings with NUL, invalid
decimals like "1e999999"/"NaN"/"-0", unknown enum numbers, timestamps at and beyond the
edges of protobuf Timestamp and datetime, empty and repeated ids, another tenant's ids,
reused request ids). A template-and-mutate mode keeps most fields valid and breaks a few,
so the deep paths (idempotency, lifecycle rules, pricing) are reached too.

Every answer must be a deliberate status, never INTERNAL or UNKNOWN, and a refused
request (or any read) must leave every tenant table of both tenants exactly as it was
(row counts and a digest of the rows).

Default: FUZZ_DEFAULT_EXAMPLES per RPC, derandomized (the same examples every run).
Big run: FUZZ_EXAMPLES=3000 (random seed; FUZZ_SEED=<n> to repeat one).
"""
from __future__ import annotations

import functools
import os
import string
import uuid
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from billing.v1 import billing_pb2 as pb
from tests.abuse.tally import TALLY
from tests.abuse.world import build_world, snapshot

SERVICE = pb.DESCRIPTOR.services_by_name["BillingService"]
METHODS = [m.name for m in SERVICE.methods]
FUZZ_DEFAULT_EXAMPLES = 150
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or FUZZ_DEFAULT_EXAMPLES)
# Per test (one RPC): generous for a loaded machine, yet a hung call still fails the run.
pytestmark = [pytest.mark.abuse, pytest.mark.timeout(max(300, EXAMPLES))]
BIG_RUN = bool(os.environ.get("FUZZ_EXAMPLES"))

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=not BIG_RUN, database=None, print_blob=True,
    suppress_health_check=list(HealthCheck),
)

# A deliberate answer. RESOURCE_EXHAUSTED is gRPC's own for a message over the 4 MiB limit.
DELIBERATE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
READS = {m for m in METHODS if m.startswith(("Get", "List"))}

# ------------------------------------------------------------------ abusive values

NASTY_STRINGS = [
    "", " ", "\x00", "a\x00b", "\x00" * 300, "\t\n\r", "\x1b[31m", "\u200b", "\ufeff", "\u202e", "😀" * 70,
    "e\u0301", "ǅ", "İ", "ß", "\uffff", "\U0010ffff", "\x7f", "\x85", "' or 1=1 --", "\"; drop table plans; --",
    "%s%n", "${jndi:ldap://x}", "../../etc/passwd", "null", "None", "undefined", "true", "0", "-1", "NaN",
    "{}", "[]", "<script>", "a" * 65, "a" * 256, "a" * 4096, "A" * 100_000, "é" * 70_000, "\x00" * 100_000,
]
BAD_DECIMALS = [
    "1e999999", "1E-999999", "NaN", "nan", "sNaN", "-NaN", "Infinity", "-Infinity", "inf", "-0", "-0.00", "+0",
    "+1", ".5", "5.", "1.", "-", ".", "1_000", "1,5", "1 000", " 1", "1 ", "0x10", "1e3", "1e-3", "١٢٣", "１２",
    "1" * 15, "1" * 16, "9" * 40, "0." + "0" * 11 + "1", "0." + "0" * 12 + "1", "0." + "1" * 13,
    "99999999999999.999999999999", "999999999999999.999999999999", "-99999999999999.99", "00000000000000000001",
    "1.000000000000000000000000000000000", "0", "1", "19.99", "19.999", "0.0025", "-1", "-5.5", "10", "1.5",
    "1" + "0" * 99, "1" + "0" * 100, "\x001", "1\x00",
]
_TS_MIN, _TS_MAX = -62135596800, 253402300799  # 0001-01-01 and 9999-12-31T23:59:59 (protobuf's range)
_NOW = int(datetime.now(timezone.utc).timestamp())
EDGE_SECONDS = [_TS_MIN, _TS_MIN - 1, _TS_MAX, _TS_MAX + 1, 0, -1, 1, 2**31 - 1, -(2**31), 2**32, 2**63 - 1,
                -(2**63), _NOW, _NOW - 1, _NOW + 1, _NOW + 60, _NOW + 3600, _NOW - 86400 * 30, _NOW - 86400 * 400,
                _NOW + 86400 * 400, 32503680000, 32503679999]  # 3000-01-01
EDGE_NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]
EDGE_INTS = [0, 1, -1, 2, 7, 10, 11, 24, 25, 50, 51, 52, 53, 100, 366, 367, 500, 501, 730, 731, 10_000,
             2**31 - 1, -(2**31)]

printable = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=20)


@functools.cache
def nasty_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY_STRINGS),
        st.text(max_size=50),  # any code point but surrogates (protobuf strings are UTF-8), NUL included
        st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Mn", "Co"]), max_size=30),
        st.builds(lambda c, n: c * n, st.sampled_from(["a", "\x00", "é", "😀", " ", "9"]),
                  st.sampled_from([64, 65, 200, 255, 256, 1000, 5000, 65536, 1_048_576])),
    )


@functools.cache
def bad_decimal() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(BAD_DECIMALS),
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.integers(min_value=-(10**40), max_value=10**40).map(str),
        st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{0,16})?([eE][+-]?[0-9]{1,7})?", fullmatch=True),
        nasty_text(),
    )


@functools.cache
def good_decimal() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["0", "1", "10", "19.99", "0.01", "0.0025", "100", "2.50", "5"]),
                     st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False,
                                 allow_infinity=False).map(str))


# ------------------------------------------------------------------ field semantics

DECIMAL_FIELDS = {"base_fee", "unit_price", "package_size", "up_to", "flat_fee", "quantity"}
CODE_FIELDS = {"code", "metric_code", "unique_property"}


class Pools:
    """Values that mean something to the server: the fuzz tenant's ids, another tenant's."""

    def __init__(self, mine, theirs):
        self.mine, self.theirs = mine, theirs
        self.random_ids = [str(uuid.uuid4()) for _ in range(3)]
        some = mine.ids()[0]
        self.id_shapes = [some.upper(), "{" + some + "}", "urn:uuid:" + some, some.replace("-", ""), some + "\x00",
                          some[:-1], " " + some, "00000000-0000-0000-0000-000000000000",
                          "ffffffff-ffff-ffff-ffff-ffffffffffff"]
        self.request_ids = ["fuzz-rid-1", "fuzz-rid-2", "fuzz-rid-3"]  # reused across RPCs on purpose

    def __repr__(self) -> str:
        return "Pools()"

    def id(self, abusive: bool, kind: str = "") -> st.SearchStrategy[str]:
        if not abusive:
            if kind == "plan":
                return st.sampled_from([p.id for p in self.mine.plans.values()])
            if kind == "subscription":
                return st.sampled_from([x.id for x in self.mine.subs.values()])
            if kind == "run":
                return st.sampled_from([r.id for r in self.mine.runs.values()])
            return st.sampled_from(self.mine.ids())
        return st.one_of(st.sampled_from(self.theirs.ids() + self.random_ids + self.id_shapes + [""]),
                         st.uuids().map(str), nasty_text())

    def request_id(self, abusive: bool) -> st.SearchStrategy[str]:
        if not abusive:
            return st.one_of(st.uuids().map(str), st.sampled_from(self.request_ids))
        return st.one_of(st.sampled_from(self.mine.request_ids[:5] + self.theirs.request_ids[:5] + ["", "x" * 255,
                                                                                                     "x" * 256]),
                         nasty_text())

    def code(self, name: str, abusive: bool) -> st.SearchStrategy[str]:
        if not abusive:
            known = self.mine.codes() + ["calls", "seats", "storage", "user"]
            return st.one_of(st.sampled_from(known),
                             st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,15}", fullmatch=True))
        return st.one_of(st.sampled_from(self.theirs.codes() + ["A", "Calls", "a" * 64, "a" * 65, "-x", "x y"]),
                         nasty_text())


def id_kind(message_name: str, name: str) -> str:
    if name in ("plan_id", "new_plan_id"):
        return "plan"
    if name == "subscription_id":
        return "subscription"
    for word, kind in (("Plan", "plan"), ("Subscription", "subscription"), ("BillingRun", "run")):
        if name == "id" and word in message_name and message_name != "ChangePlanRequest":
            return kind
    return "subscription" if message_name == "ChangePlanRequest" else ""


def string_value(pools: Pools, name: str, abusive: bool, message_name: str = "") -> st.SearchStrategy[str]:
    if name == "request_id":
        return pools.request_id(abusive)
    if name == "id" or name.endswith("_id") and name not in ("customer_id", "event_id"):
        return pools.id(abusive, id_kind(message_name, name))
    if name in DECIMAL_FIELDS:
        return bad_decimal() if abusive else good_decimal()
    if name in CODE_FIELDS:
        return pools.code(name, abusive)
    if name == "currency":
        return nasty_text() | st.sampled_from(["eur", "XXX", "BGN", "EURO", "€", "XAU", "XTS"]) if abusive \
            else st.sampled_from(["EUR", "USD", "JPY", "BHD", "CLF"])
    if name == "page_token":
        return st.sampled_from(PAGE_TOKENS) | nasty_text() if abusive else st.just("")
    if name in ("idempotency_key", "event_id"):
        return nasty_text() | st.sampled_from(pools.theirs.event_ids + ["x" * 200, "x" * 201]) if abusive \
            else st.one_of(st.uuids().map(str), st.sampled_from(pools.mine.event_ids + ["fuzz-key-1"]))
    return nasty_text() if abusive else printable


def _token(*parts) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


PAGE_TOKENS = [
    _token("9999-12-31T23:59:59.999999-14:00", str(uuid.uuid4())),
    _token("0001-01-01T00:00:00+14:00", str(uuid.uuid4())),
    _token("0001-01-01T00:00:00", str(uuid.uuid4())),
    _token("2025-01-01T00:00:00+00:00", "not-a-uuid"),
    _token("2025-01-01T00:00:00+00:00", str(uuid.uuid4()), "extra"),
    _token("2025-01-01T00:00:00+00:00"),
    _token(None, None),
    _token(1, 2),
    _token("2025-01-01T00:00:00+00:00", str(uuid.uuid4()) + "\x00"),
    "e30=", "W10=", "bnVsbA==", "!!!", "====", "AAAA", "\x00",
]


def timestamp_value(abusive: bool, name: str = "") -> st.SearchStrategy:
    if not abusive:  # ("now", seconds from now, nanos): resolved when the request is built
        lo, hi = {"occurred_at": (-3600, 0), "as_of": (-86400 * 60, 0),
                  "resumes_at": (60, 86400 * 60)}.get(name, (-86400 * 40, 86400 * 40))
        return st.one_of(st.none(), st.tuples(st.just("now"), st.integers(lo, hi), st.integers(0, 999_999_999)))
    secs = st.one_of(st.sampled_from(EDGE_SECONDS), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                     st.integers(min_value=_TS_MIN - 10, max_value=_TS_MAX + 10))
    nanos = st.one_of(st.sampled_from(EDGE_NANOS), st.integers(min_value=-(2**31), max_value=2**31 - 1))
    return st.tuples(secs, nanos)


def int_value(name: str, abusive: bool) -> st.SearchStrategy[int]:
    if abusive:
        return st.one_of(st.sampled_from(EDGE_INTS), st.integers(min_value=-(2**31), max_value=2**31 - 1))
    if name == "page_size":
        return st.integers(min_value=0, max_value=600)
    return st.integers(min_value=0, max_value=31)


def enum_value(field, abusive: bool) -> st.SearchStrategy[int]:
    known = [v.number for v in field.enum_type.values]
    if abusive:
        return st.one_of(st.sampled_from([max(known) + 1, -1, 2**31 - 1, -(2**31), 1000]),
                         st.integers(min_value=-(2**31), max_value=2**31 - 1))
    return st.sampled_from(known)


# Requests that are valid as a whole (the generic "valid" values are valid field by field
# only): the base the mutate mode breaks one to three fields of, so each rule deep in the
# services is reached with everything else right.

@st.composite
def _tiers(draw):
    bounds = sorted(draw(st.sets(st.integers(1, 10_000), max_size=3)))
    prices = st.sampled_from(["0", "0.5", "1", "0.000125"])
    tiers = [{"up_to": str(b), "unit_price": draw(prices), "flat_fee": draw(st.sampled_from(["", "0", "1.00"]))}
             for b in bounds]
    return tiers + [{"up_to": "", "unit_price": draw(prices)}]


@st.composite
def _charge(draw, metric: str):
    model = draw(st.sampled_from([1, 2, 3, 4]))
    agg = draw(st.sampled_from([1, 2, 3, 4, 5]))
    c = {"metric_code": metric, "aggregation": agg, "pricing_model": model}
    if agg == 4:
        c["unique_property"] = "user"
    if model in (1, 2):
        c["unit_price"] = draw(good_decimal())
    if model == 2:
        c["package_size"] = draw(st.sampled_from(["1", "5", "0.5", "1000"]))
    if model in (3, 4):
        c["tiers"] = draw(_tiers())
    return c


@st.composite
def _create_plan(draw, pools):
    metrics = draw(st.lists(st.sampled_from(["calls", "seats", "storage", "gb", "tokens"]), unique=True,
                            max_size=3))
    currency = draw(st.sampled_from(["EUR", "USD", "JPY", "BHD"]))
    fee = draw(st.sampled_from({"JPY": ["0", "500"], "BHD": ["0", "1.500"]}.get(currency, ["0", "9.99", "100"])))
    unit = draw(st.sampled_from([1, 2, 3, 4]))
    return {"request_id": draw(pools.request_id(False)), "code": draw(pools.code("code", False)),
            "name": "Fuzz plan", "description": draw(st.sampled_from(["", "a\nb"])), "currency": currency,
            "interval": unit, "interval_count": draw(st.integers(1, {1: 366, 2: 52, 3: 24, 4: 10}[unit])),
            "base_fee": fee, "billing_timing": draw(st.sampled_from([1, 2])), "trial_days": draw(st.integers(0, 30)),
            "usage_charges": [draw(_charge(m)) for m in metrics]}


@st.composite
def _record_usage(draw, pools):
    sub = pools.mine.subs[draw(st.sampled_from(["active", "active2", "trialing", "paused"]))]
    at = sub.start_at.seconds + draw(st.integers(min_value=1, max_value=120))
    return {"request_id": draw(pools.request_id(False)), "event_id": draw(st.one_of(st.just(""), st.uuids().map(str))),
            "subscription_id": sub.id, "metric_code": draw(st.sampled_from(["calls", "seats", "storage"])),
            "quantity": draw(good_decimal()), "occurred_at": (at, 0),
            "properties": draw(st.dictionaries(st.sampled_from(["user", "region"]), printable, max_size=2))}


@st.composite
def _create_subscription(draw, pools):
    plan = pools.mine.plans[draw(st.sampled_from(["main", "upgrade", "usd", "trial", "weekly"]))]
    return {"request_id": draw(pools.request_id(False)), "customer_id": draw(printable), "plan_id": plan.id,
            "activate": draw(st.booleans()), "trial_days": draw(st.one_of(st.none(), st.integers(0, 30))),
            "metadata": draw(st.dictionaries(printable, printable, max_size=3))}


TEMPLATES = {"CreatePlanRequest": _create_plan, "RecordUsageRequest": _record_usage,
             "CreateSubscriptionRequest": _create_subscription}


_MODES = st.sampled_from(["mutate", "mutate", "mutate", "random", "valid"])
_UNSET = st.integers(0, 9)


@functools.cache
def _broken(descriptor) -> st.SearchStrategy[set]:
    names = [f.name for f in descriptor.fields]
    return st.sets(st.sampled_from(names), min_size=1, max_size=min(3, len(names)))


@st.composite
def message(draw, descriptor, pools: Pools, depth: int = 0, mode: str | None = None):
    """A dict of field values for `descriptor`. mode: "valid", "random" or "mutate"."""
    if mode is None:
        mode = draw(_MODES)
    fields = list(descriptor.fields)
    if mode == "mutate":
        broken = draw(_broken(descriptor)) if fields else set()
    template = TEMPLATES.get(descriptor.name)
    if template is not None and mode in ("valid", "mutate"):
        key = ("template", descriptor.name, id(pools))
        if key not in _STRATEGIES:
            _STRATEGIES[key] = template(pools)
        out = {k: v for k, v in draw(_STRATEGIES[key]).items() if v is not None}
        if mode == "mutate":
            for f in fields:
                if f.name in broken:
                    out[f.name] = draw(field_value(f, pools, True, depth, mode))
        return out
    out = {}
    for f in fields:
        if mode == "random":
            abusive = draw(st.booleans())
        elif mode == "mutate":
            abusive = f.name in broken
        else:
            abusive = False
        if not abusive and draw(_UNSET) == 0:
            continue  # leave unset
        out[f.name] = draw(field_value(f, pools, abusive, depth, mode))
    return out


_STRATEGIES: dict[tuple, st.SearchStrategy] = {}


def field_value(f, pools: Pools, abusive: bool, depth: int, mode: str) -> st.SearchStrategy:
    """The strategy for one field, built once: building strategies costs more than drawing."""
    key = (f.full_name, id(pools), abusive, depth, mode)
    strategy = _STRATEGIES.get(key)
    if strategy is None:
        strategy = _STRATEGIES[key] = _field_value(f, pools, abusive, depth, mode)
    return strategy


def _field_value(f, pools: Pools, abusive: bool, depth: int, mode: str) -> st.SearchStrategy:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        keys = nasty_text() if abusive else printable
        values = nasty_text() if abusive else printable
        if abusive:
            return st.one_of(st.dictionaries(keys, values, max_size=5),
                             st.dictionaries(st.text(max_size=8), st.just("v"), min_size=49, max_size=55))
        return st.dictionaries(keys, values, max_size=3)
    if f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp":
        return timestamp_value(abusive, f.name)
    if f.is_repeated:
        item = single_value(f, pools, abusive, depth, "valid" if not abusive else mode)
        if abusive:
            return st.one_of(st.lists(item, max_size=4), st.lists(item, min_size=50, max_size=52))
        return st.lists(item, min_size=0, max_size=3)
    return single_value(f, pools, abusive, depth, mode)


def single_value(f, pools: Pools, abusive: bool, depth: int, mode: str) -> st.SearchStrategy:
    if f.type == FD.TYPE_MESSAGE:
        if depth > 3:
            return st.just({})
        return message(f.message_type, pools, depth + 1, None if abusive else "valid")
    if f.type == FD.TYPE_STRING:
        return string_value(pools, f.name, abusive, f.containing_type.name)
    if f.type == FD.TYPE_BOOL:
        return st.booleans()
    if f.type == FD.TYPE_ENUM:
        return enum_value(f, abusive)
    if f.type in (FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_SINT32, FD.TYPE_UINT32):
        return int_value(f.name, abusive)
    raise AssertionError(f"no strategy for field {f.full_name} of type {f.type}")  # a new kind of field: add one


def cls_of(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def build(cls, values: dict):
    """A message from the dict `message` drew (Timestamps come as (seconds, nanos))."""
    msg = cls()
    for name, value in values.items():
        f = cls.DESCRIPTOR.fields_by_name[name]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            getattr(msg, name).update(value)
        elif f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp":
            if value is not None:
                ts = getattr(msg, name)
                if value[0] == "now":
                    value = (int(datetime.now(timezone.utc).timestamp()) + value[1], value[2])
                ts.seconds, ts.nanos = value
        elif f.type == FD.TYPE_MESSAGE and f.is_repeated:
            for item in value:
                getattr(msg, name).append(build(cls_of(f.message_type), item))
        elif f.type == FD.TYPE_MESSAGE:
            getattr(msg, name).CopyFrom(build(cls_of(f.message_type), value))
        elif f.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


# ------------------------------------------------------------------ the test


@pytest.fixture
async def worlds(stub, new_tenant_module):
    """Fresh tenants for every RPC's test (not per example): what one RPC's fuzzing did (all
    plans archived, every subscription canceled) must not starve the next one."""
    a, b = await new_tenant_module("fuzz-a"), await new_tenant_module("fuzz-b")
    mine = await build_world(stub, a, "fa")
    theirs = await build_world(stub, b, "fb")
    return mine, theirs, Pools(mine, theirs)


@pytest.fixture(scope="module")
async def new_tenant_module(admin_conn):
    from billing.services.tenants import create_tenant
    from tests.conftest import Tenant

    async def make(name: str) -> Tenant:
        t = await create_tenant(admin_conn, name)
        return Tenant(str(t.tenant_id), t.api_key, str(t.api_key_id))

    return make


def fuzz_seed(test):
    return seed(int(os.environ["FUZZ_SEED"]))(test) if "FUZZ_SEED" in os.environ else test


@pytest.mark.parametrize("method", METHODS)
@fuzz_seed
@FUZZ_SETTINGS
@given(data=st.data())
async def test_fuzz_rpc(stub, admin_conn, worlds, method, data):
    mine, theirs, pools = worlds
    rpc = SERVICE.methods_by_name[method]
    request = build(cls_of(rpc.input_type), data.draw(message(rpc.input_type, pools), label="fields"))
    before = (await snapshot(admin_conn, mine.tenant.id), await snapshot(admin_conn, theirs.tenant.id))
    try:
        await getattr(stub, method)(request, metadata=mine.md, timeout=60)
        code, details = grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as err:
        code, details = err.code(), err.details()
    TALLY[("grpc", method)][code.name] += 1
    assert code in DELIBERATE, f"{method} answered {code.name}: {details}"
    after = (await snapshot(admin_conn, mine.tenant.id), await snapshot(admin_conn, theirs.tenant.id))
    assert after[1] == before[1], f"{method} changed the OTHER tenant's rows"
    if code is not grpc.StatusCode.OK or method in READS:
        changed = [t for t in before[0] if before[0][t] != after[0][t]]
        assert not changed, f"{method} answered {code.name} yet changed {changed}"


def test_every_rpc_is_fuzzed():
    assert len(METHODS) == 35 and set(METHODS) == {m.name for m in SERVICE.methods}


# ------------------------------------------------------------------ bytes that are no message at all


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\x80", b"\xe2\x82"]


@st.composite
def malformed(draw, descriptor):
    """Wire bytes the generated code cannot parse: invalid UTF-8 in a string field, a field
    with the wrong wire type, a truncated length, or plain random bytes."""
    strings = [f.number for f in descriptor.fields if f.type == FD.TYPE_STRING] or [1]
    kind = draw(st.sampled_from(["utf8", "wiretype", "truncated", "random"]))
    n = draw(st.sampled_from(strings))
    if kind == "utf8":
        payload = draw(st.sampled_from(BAD_UTF8)) + draw(st.binary(max_size=10))
        return _varint(n << 3 | 2) + _varint(len(payload)) + payload
    if kind == "wiretype":  # a string field sent as a fixed64, or a group start
        return _varint(n << 3 | draw(st.sampled_from([1, 3, 4, 5, 6, 7]))) + draw(st.binary(max_size=8))
    if kind == "truncated":
        return _varint(n << 3 | 2) + _varint(draw(st.integers(5, 2**31))) + b"abc"
    return draw(st.binary(min_size=1, max_size=200))


@pytest.mark.parametrize("method", METHODS)
@fuzz_seed
@settings(FUZZ_SETTINGS, max_examples=max(20, EXAMPLES // 5))
@given(data=st.data())
async def test_malformed_request_bytes(channel, admin_conn, worlds, method, data):
    """Not a protobuf message at all: refused as INVALID_ARGUMENT (or parsed leniently, as
    protobuf may, and then answered deliberately), never UNKNOWN/INTERNAL."""
    mine, theirs, _ = worlds
    rpc = SERVICE.methods_by_name[method]
    raw = data.draw(malformed(rpc.input_type), label="bytes")
    call = channel.unary_unary(f"/{SERVICE.full_name}/{method}")  # bytes in, bytes out
    before = await snapshot(admin_conn, mine.tenant.id)
    try:
        await call(raw, metadata=mine.md, timeout=60)
        code, details = grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as err:
        code, details = err.code(), err.details()
    TALLY[("grpc-raw", method)][code.name] += 1
    assert code in DELIBERATE, f"{method} answered {code.name}: {details}"
    if code is not grpc.StatusCode.OK or method in READS:
        assert await snapshot(admin_conn, mine.tenant.id) == before


# ------------------------------------------------------------------ what the fuzzer found, pinned

FOUND = [  # (method, request): each once answered INTERNAL or UNKNOWN; now INVALID_ARGUMENT
    ("ListPlans", pb.ListPlansRequest(page_token=PAGE_TOKENS[0])),  # year 9999 at -14:00: beyond datetime in UTC
    ("ListPlans", pb.ListPlansRequest(page_token=PAGE_TOKENS[1])),  # year 1 at +14:00: before datetime in UTC
    ("ListSubscriptions", pb.ListSubscriptionsRequest(page_token=PAGE_TOKENS[0])),
    ("ListBillingRuns", pb.ListBillingRunsRequest(page_token=PAGE_TOKENS[0])),
    ("ListPlans", pb.ListPlansRequest(code="pro\x00")),  # PostgreSQL text refuses NUL
    ("ListSubscriptions", pb.ListSubscriptionsRequest(customer_id="\x00")),
    ("RunBilling", pb.RunBillingRequest(request_id="\x00", idempotency_key="fuzz-found-1")),  # NUL into the audit row
]


@pytest.mark.parametrize("method, request_", FOUND, ids=[f"{m}-{i}" for i, (m, _) in enumerate(FOUND)])
async def test_found_by_the_fuzzer(stub, worlds, method, request_):
    mine, _, _ = worlds
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(request_, metadata=mine.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


async def test_undecodable_request_bytes_are_invalid_argument(channel, worlds):
    mine, _, _ = worlds
    call = channel.unary_unary(f"/{SERVICE.full_name}/GetPlan")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\n\x05abc", metadata=mine.md)  # a string field 5 bytes long with 3 bytes: corrupt
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:  # authentication still comes first
        await call(b"\n\x05abc")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("quantity", ["１２", "١٢", "１.５", "1.５", "٣"])
async def test_non_ascii_digits_in_a_quantity_are_invalid_argument(stub, worlds, quantity):
    """Found by the big run: Python's \\d matched full-width and Arabic-Indic digits, the
    quantity passed validation and PostgreSQL's numeric refused it: INTERNAL (and on the
    Kafka path a batch that failed on every retry)."""
    mine, _, _ = worlds
    sub = mine.subs["active"]
    req = pb.RecordUsageRequest(request_id=str(uuid.uuid4()), subscription_id=sub.id, metric_code="calls",
                                quantity=quantity)
    req.occurred_at.CopyFrom(sub.start_at)
    req.occurred_at.seconds += 5
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordUsage(req, metadata=mine.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "quantity" in err.value.details()

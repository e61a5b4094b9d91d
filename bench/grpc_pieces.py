"""Our call interceptor's pieces in one process, without grpc: CPU µs per call of each.

    python -m bench.grpc_pieces                  # with the tracer provider (the default setup)
    python -m bench.grpc_pieces --no-tracer      # as BILLING_TRACING_ENABLED=false

Each piece of billing/api/interceptors.py (the malformed check, the key-cache
authentication, the span, the bound, the metrics, and all five as the interceptor composes
them) wraps a coroutine that returns a prebuilt CheckEntitlementResponse; each is awaited
--calls times in a row on one loop, `time.process_time()` around, best of --repeat; printed
as µs per call above the bare coroutine. A context object stands in for grpc's (the API key
in its metadata, no status code set); the key is found in the cache, as every call after a
key's first. Hot-loop figures: through grpc the same code runs between grpc's and the loop's
work and costs several times more (bench/grpc_variants.py measures that).

Last line: `grpc_pieces tracer=<on|off> bare_us=<b> checked=<us> authenticated=<us> traced=<us>
bounded=<us> measured=<us> all=<us>`.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

from bench.grpc_variants import API_KEY, _ours

METHOD = "/billing.v1.BillingService/CheckEntitlement"


class _Context:
    metadata = (("authorization", "Bearer " + API_KEY), ("user-agent", "grpc-go/1.70"))

    def invocation_metadata(self):
        return self.metadata

    def code(self):
        return None

    def time_remaining(self):
        return 5.0


async def measure(tracer: bool, calls: int, repeat: int) -> dict[str, float]:
    from billing.v1 import billing_pb2 as pb

    ours = _ours({"tracer": tracer})
    answer = pb.CheckEntitlementResponse()

    async def check(request, context):
        return answer

    pieces = {
        "bare": check,
        "checked": ours._checked(check),
        "authenticated": ours._authenticated(METHOD, check),
        "traced": ours._traced(METHOD, check),
        "bounded": ours._bounded(check),
        "measured": ours._measured("CheckEntitlement", check),
        "all": ours._measured("CheckEntitlement", ours._bounded(
            ours._traced(METHOD, ours._authenticated(METHOD, ours._checked(check))))),
    }
    request = pb.CheckEntitlementRequest(subscription_id=str(uuid.uuid4()), feature_code="sso")
    context = _Context()
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, behavior in pieces.items():
            started = time.process_time()
            for _ in range(calls):
                await behavior(request, context)
            us = (time.process_time() - started) / calls * 1e6
            best[name] = min(best.get(name, us), us)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-tracer", action="store_true", help="no tracer provider installed")
    parser.add_argument("--calls", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best = asyncio.run(measure(not args.no_tracer, args.calls, args.repeat))
    bare = best.pop("bare")
    print(f"grpc_pieces tracer={'off' if args.no_tracer else 'on'} bare_us={bare:.2f} "
          + " ".join(f"{name}={us - bare:.1f}" for name, us in best.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

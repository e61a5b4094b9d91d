"""The grpc.aio floor, variant by variant: what each server option, event loop, environment
variable, interceptor of ours, client connection count, grpcio version or server kind costs
per unary call, against the floor's baseline measured in the same run.

    python -m bench.grpc_variants                           # every variant of DEFAULT, 10 s each
    python -m bench.grpc_variants --variants uvloop,ours-interceptor --rounds 2
    python -m bench.grpc_variants --python grpcio-1.86=/tmp/g186/bin/python --variants none
    python -m bench.grpc_variants --list

Each measurement is bench/grpc_floor.py's: a server in a process of its own answering
`billing.v1.BillingService/CheckEntitlement` with an empty response, ghz (50 concurrent calls,
10 connections) against it for `--seconds` after 2 s of warm-up, the server's process-tree
CPU divided by the calls answered. A round is the baseline, every variant, the baseline
again; a variant's ratio is against the mean of its round's two baselines, so drift in the
machine's load during the round shows as the gap between them (printed too).

The "ours-*" variants wrap the handler with the pieces of billing/api/interceptors.py (the
metrics, the bound, the span, the authentication, the malformed-request check), built as the
real server builds them: the tracer provider of `tracing.configure` (no exporter, every span
sampled: the defaults), an API key found in the key cache (a hit, as every call after a
key's first; no database here). `--python LABEL=PATH` adds a variant whose server runs on
another interpreter (a scratch venv with another grpcio; PYTHONPATH is set to this checkout,
it needs grpcio, protobuf and psutil only, and runs the plain floor).

Last line: `grpc_variants baseline_us=<b> <variant>=<us>/<ratio> ... load_avg=<l>`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bk_floor_variants_" + "x" * 24
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # billing/api/server.py (not imported: the scratch venvs lack its deps)
GC_THRESHOLD_GEN0 = 200_000  # billing/runtime.py's (not imported, for the same reason)
BASE_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]

# name -> spec: options (added to ours), env, loop, wrap (which of our pieces), interceptor,
# sync (grpc's thread-pool server), connections (ghz's), python (another interpreter).
VARIANTS: dict[str, dict] = {
    "uvloop": {"loop": "uvloop"},
    "max_concurrent_streams=10": {"options": [("grpc.max_concurrent_streams", 10)]},
    "optimization_target=throughput": {"options": [("grpc.optimization_target", "throughput")]},
    "optimization_target=latency": {"options": [("grpc.optimization_target", "latency")]},
    "channelz=off": {"options": [("grpc.enable_channelz", 0)]},
    "so_reuseport=1": {"options": [("grpc.so_reuseport", 1)]},
    "http2_bdp_probe=off": {"options": [("grpc.http2.bdp_probe", 0)]},
    "http2_write_buffer=1MB": {"options": [("grpc.http2.write_buffer_size", 1 << 20)]},
    "http2_lookahead=64KB": {"options": [("grpc.http2.lookahead_bytes", 65536)]},
    "max_concurrent_rpcs=200": {"max_concurrent_rpcs": 200},
    "poll_strategy=poll": {"env": {"GRPC_POLL_STRATEGY": "poll"}},
    "poll_strategy=epoll1": {"env": {"GRPC_POLL_STRATEGY": "epoll1"}},
    "connections=1": {"connections": 1},
    "connections=50": {"connections": 50},
    "interceptor-passthrough": {"interceptor": "passthrough"},
    "interceptor-cached": {"interceptor": "cached"},
    "ours-metrics": {"wrap": ("measured",)},
    "ours-metrics-bound": {"wrap": ("measured", "bounded")},
    "ours-metrics-bound-span": {"wrap": ("measured", "bounded", "traced")},
    "ours-all-no-interceptor": {"wrap": ("measured", "bounded", "traced", "authenticated", "checked")},
    "ours-all-no-tracer": {"wrap": ("measured", "bounded", "traced", "authenticated", "checked"), "tracer": False},
    "ours-interceptor": {"interceptor": "ours"},
    "ours-interceptor-uvloop": {"interceptor": "ours", "loop": "uvloop"},
    "ours-interceptor-no-tracer": {"interceptor": "ours", "tracer": False},  # as BILLING_TRACING_ENABLED=false
    "handler-reads-metadata-twice": {"metadata": True},
    # The collector tuned as `billing serve` tunes it (billing/runtime.py tune_gc).
    "gc-tuned": {"gc": True},
    "ours-interceptor-gc-tuned": {"interceptor": "ours", "gc": True},
    "ours-interceptor-no-tracer-gc-tuned": {"interceptor": "ours", "tracer": False, "gc": True},
    "sync-server": {"sync": True},
    "sync-server-bridge": {"sync": True, "bridge": True},
    "sync-server-bridge-uvloop": {"sync": True, "bridge": True, "loop": "uvloop"},
}
# grpcio 1.85's experiments that are plausibly on by default (names from its library; an
# unknown or already-off name is harmless), off in two groups and all together.
EE_EXPERIMENTS = ("event_engine_client", "event_engine_listener", "event_engine_for_all_other_endpoints",
                  "event_engine_callback_cq", "event_engine_fork", "use_call_event_engine_in_completion_queue")
OTHER_EXPERIMENTS = (
    "buffer_list_deletion_prep", "call_tracer_in_transport", "callv3_batch_validation", "custom_frame_check",
    "header_data_frame", "keep_alive_ping_timer_batch", "message_size_refactoring", "metadata_publish_to_app_tag",
    "prioritize_finished_requests", "return_preexisting_errors", "tcp_frame_size_tuning", "tcp_rcv_lowat",
    "call_tracer_send_initial_metadata_is_an_annotation", "call_tracer_send_trailing_metadata_is_an_annotation",
    "fail_recv_metadata_on_deadline_exceeded", "fix_v3_filter_stack_server_side_ordering",
    "h2_max_deallocating_streams_headroom", "metadata_outstanding_token_refactor", "promise_batch_cleanup_on_cancel",
    "promise_filter_send_cancel_metadata", "recv_message_filter_bypass_fix", "schedule_cancellation_over_write",
    "skip_clear_peer_on_cancellation", "v2_non_owning_waker_implementation", "free_large_allocator", "fuse_filters",
    "pollset_alternative", "map_host_header_to_authority")


def _off(names) -> dict:
    return {"env": {"GRPC_EXPERIMENTS": ",".join("-" + n for n in names)}}


VARIANTS.update({"experiments-event-engine-off": _off(EE_EXPERIMENTS), "experiments-others-off": _off(OTHER_EXPERIMENTS),
                 "experiments-all-off": _off(EE_EXPERIMENTS + OTHER_EXPERIMENTS)})
VARIANTS.update({f"experiment-off:{name}": _off((name,)) for name in EE_EXPERIMENTS})
VARIANTS["experiments-listener-endpoints-off"] = _off(("event_engine_listener", "event_engine_for_all_other_endpoints"))
VARIANTS["experiments-event-engine-off-uvloop"] = {**_off(EE_EXPERIMENTS), "loop": "uvloop"}
DEFAULT = tuple(VARIANTS)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the server process

def _answer():
    from billing.v1 import billing_pb2 as pb

    return pb, pb.CheckEntitlementResponse()


def _handler_map(behavior, pb):
    import grpc

    return grpc.method_handlers_generic_handler("billing.v1.BillingService", {
        "CheckEntitlement": grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=pb.CheckEntitlementRequest.FromString,
            response_serializer=pb.CheckEntitlementResponse.SerializeToString)})


def _ours(spec: dict):
    """The call interceptor of the real server, with a key cache that knows API_KEY."""
    from billing.api.interceptors import CallInterceptor
    from billing.api.overload import CallLimit
    from billing.config import Settings
    from billing.ops import tracing
    from billing.services.api_keys import KeyCache
    from billing.services.tenants import KeyIdentity, hash_key

    if spec.get("tracer", True):
        tracing.configure(Settings())
    keys = KeyCache(None, 60.0)  # type: ignore[arg-type]  # no database: every lookup a hit
    keys._listening = True
    digest = hash_key(API_KEY)
    keys._entries[digest] = (KeyIdentity(uuid.uuid4(), uuid.uuid4(), digest), float("inf"))
    return CallInterceptor(keys, CallLimit(Settings().grpc_max_concurrent_calls), ("CheckEntitlement",))


def _wrapped(spec: dict, behavior):
    """`behavior` inside the pieces named by spec["wrap"], innermost last, as CallInterceptor._wrap
    composes them."""
    ours = _ours(spec)
    method = "/billing.v1.BillingService/CheckEntitlement"
    pieces = spec["wrap"]
    if "checked" in pieces:
        behavior = ours._checked(behavior)
    if "authenticated" in pieces:
        behavior = ours._authenticated(method, behavior)
    if "traced" in pieces:
        behavior = ours._traced(method, behavior)
    if "bounded" in pieces:
        behavior = ours._bounded(behavior)
    if "measured" in pieces:
        behavior = ours._measured("CheckEntitlement", behavior)
    return behavior


class _Passthrough:
    """The least interceptor: grpc.aio awaits it on every call, it asks for the handler."""

    async def intercept_service(self, continuation, details):
        return await continuation(details)


class _Cached:
    """An interceptor that returns the handler it kept (as ours does), no wrapping."""

    def __init__(self):
        self.kept = {}

    async def intercept_service(self, continuation, details):
        handler = self.kept.get(details.method)
        if handler is None:
            handler = self.kept[details.method] = await continuation(details)
        return handler


def _interceptors(spec: dict) -> list:
    import grpc

    kind = spec.get("interceptor")
    if kind is None:
        return []
    if kind == "ours":
        return [_ours(spec)]
    base = {"passthrough": _Passthrough, "cached": _Cached}[kind]
    return [type(kind, (base, grpc.aio.ServerInterceptor), {})()]


async def _serve_aio(port: int, spec: dict) -> None:
    import grpc

    pb, answer = _answer()

    async def check(request, context):
        return answer

    async def check_reading_metadata(request, context):  # what our span and authentication read
        context.invocation_metadata()
        context.invocation_metadata()
        context.code()
        return answer

    behavior = check_reading_metadata if spec.get("metadata") else check
    behavior = _wrapped(spec, behavior) if spec.get("wrap") else behavior
    server = grpc.aio.server(interceptors=_interceptors(spec), options=BASE_OPTIONS + list(spec.get("options", ())),
                             maximum_concurrent_rpcs=spec.get("max_concurrent_rpcs"))
    server.add_generic_rpc_handlers((_handler_map(behavior, pb),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if spec.get("gc"):
        import gc

        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD_GEN0, 20, 20)
    print("ready", flush=True)
    await server.wait_for_termination()


def _bridged(answer, spec: dict):
    """A synchronous handler that runs a coroutine on an event loop in a thread of its own and
    waits for it: how the sync server would call our async services and asyncpg."""
    import threading

    if spec.get("loop") == "uvloop":
        import uvloop  # type: ignore[import-not-found]

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def check():
        return answer

    return lambda request, context: asyncio.run_coroutine_threadsafe(check(), loop).result()


def _serve_sync(port: int, spec: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    pb, answer = _answer()
    behavior = (lambda request, context: answer) if not spec.get("bridge") else _bridged(answer, spec)
    server = grpc.server(ThreadPoolExecutor(max_workers=spec.get("workers", 50)),
                         options=BASE_OPTIONS + list(spec.get("options", ())))
    server.add_generic_rpc_handlers((_handler_map(behavior, pb),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def serve_main(port: int, spec: dict) -> None:
    if spec.get("sync"):
        _serve_sync(port, spec)
    elif spec.get("loop") == "uvloop":
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(_serve_aio(port, spec))
    else:
        asyncio.run(_serve_aio(port, spec))


# ------------------------------------------------------------------ the driver

def _start(port: int, spec: dict) -> subprocess.Popen:
    env = {**os.environ, "GRPC_VERBOSITY": "NONE", "GRPC_ENABLE_FORK_SUPPORT": "false", **spec.get("env", {})}
    python = spec.get("python") or sys.executable
    if spec.get("python"):
        env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([python, "-m", "bench.grpc_variants", "--serve", str(port), "--spec", json.dumps(spec)],
                            env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if (proc.stdout.readline() if proc.stdout else "").strip() != "ready":
        raise RuntimeError(f"the variant server did not start (exit {proc.poll()}): {spec}")
    return proc


def measure(spec: dict, seconds: float, clients: int, connections: int, warmup_s: float = 2.0) -> dict:
    from bench import ghz
    from bench.cpu import CpuMeter
    from billing.config import Settings
    from billing.devstack import free_port

    binary = ghz.ensure_ghz(Settings().kafka_cache_dir)
    port = free_port()
    proc = _start(port, spec)
    connections = spec.get("connections", connections)
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-variants-"))
    requests = [{"subscription_id": str(uuid.uuid4()), "feature_code": f} for f in ("sso", "tier", "calls")
                for _ in range(100)]
    address = f"127.0.0.1:{port}"
    try:
        meter = CpuMeter(server=[proc.pid])
        ghz.run(binary, address, "CheckEntitlement", requests, API_KEY, concurrency=clients, connections=connections,
                seconds=warmup_s, workdir=work)
        load0 = os.getloadavg()[0]
        before = meter.read()
        r = ghz.run(binary, address, "CheckEntitlement", requests, API_KEY, concurrency=clients,
                    connections=connections, seconds=seconds, workdir=work)
        cpu = CpuMeter.used(before, meter.read())["server"] or 0.0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = max(1, r["ok"])
    return {"server_us": round(cpu / ok * 1e6, 1), "ghz_us": r["cpu_us_per_call"], "calls_per_s": r["ok_per_s"],
            "p99_ms": r["p99_ms"], "errors": r["errors"], "error_codes": r["error_codes"],
            "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def run_round(names: list[str], variants: dict[str, dict], args) -> list[dict]:
    rows = []
    first = measure({}, args.seconds, args.clients, args.connections)
    log(f"baseline: {first}")
    measured = []
    for name in names:
        figures = measure(variants[name], args.seconds, args.clients, args.connections)
        log(f"{name}: {figures}")
        measured.append((name, figures))
    last = measure({}, args.seconds, args.clients, args.connections)
    log(f"baseline (end of round): {last}")
    base = (first["server_us"] + last["server_us"]) / 2
    for name, figures in measured:
        rows.append({"variant": name, **figures, "ratio": round(figures["server_us"] / base, 3),
                     "baseline_us": [first["server_us"], last["server_us"]]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default=",".join(DEFAULT), help="comma-separated names (--list)")
    parser.add_argument("--python", action="append", default=[], metavar="LABEL=PATH",
                        help="a variant: the plain floor served by another interpreter (another grpcio)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve, json.loads(args.spec))
        return 0
    variants = dict(VARIANTS)
    names = [n for n in args.variants.split(",") if n and n != "none"]
    for item in args.python:
        label, _, path = item.partition("=")
        variants[label] = {"python": path}
        names.append(label)
    if args.list:
        print("\n".join(f"{n}: {json.dumps(s)}" for n, s in variants.items()))
        return 0
    unknown = [n for n in names if n not in variants]
    if unknown:
        parser.error(f"unknown variants {unknown}; --list names them")
    started = time.perf_counter()
    rows = []
    for _ in range(args.rounds):
        rows.extend(run_round(names, variants, args))
    for row in rows:
        print(json.dumps(row))
    bases = [u for row in rows for u in row["baseline_us"]]
    print("grpc_variants baseline_us=" + "/".join(f"{u:.0f}" for u in sorted(set(bases))) + " "
          + " ".join(f"{row['variant']}={row['server_us']:.0f}/{row['ratio']}" for row in rows)
          + f" load_avg={rows[0]['load_avg'][0] if rows else '-'}-{rows[-1]['load_avg'][1] if rows else '-'}")
    log(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

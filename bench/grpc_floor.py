"""The grpc.aio floor: what Python's grpc.aio alone costs per unary call on this machine.

    python -m bench.entitlements --floor              # 50 concurrent calls (ghz), 10 s
    python -m bench.grpc_floor --seconds 10 --processes 2

A trivial server in a process of its own: `grpc.aio.server` with the options of ours
(billing/api/server.py), one generic handler for `billing.v1.BillingService/CheckEntitlement`
that parses the request and answers an empty `CheckEntitlementResponse`; no interceptor, no
database, no span, no metric. ghz drives it exactly as bench/entitlements.py drives the real
server (the same proto, request list shape, concurrency and connections). The server's CPU
per call (its process tree, bench/cpu.py) is the least any CheckEntitlement can cost in one
grpc.aio process: the gap between it and the real server's figure is what our code spends.

--processes N runs N such servers on one port (SO_REUSEPORT, as BILLING_GRPC_PROCESSES);
--poll-strategy sets GRPC_POLL_STRATEGY in the servers; --uvloop runs them on uvloop when it
is installed. The last line is `grpc_floor_calls_per_s=<n> p99_ms=<x> p50_ms=<y>
server_us_per_call=<s> client_us_per_call=<c> errors=<k> processes=<N> load_avg=<l>`.
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

from bench import ghz
from bench.cpu import CpuMeter
from billing.config import Settings
from billing.devstack import free_port


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def _serve(port: int, reuse_port: bool, use_uvloop: bool) -> None:
    import grpc

    from billing.api.server import MAX_MESSAGE_BYTES
    from billing.v1 import billing_pb2 as pb

    answer = pb.CheckEntitlementResponse()

    async def check(request, context):
        return answer

    handler = grpc.method_handlers_generic_handler("billing.v1.BillingService", {
        "CheckEntitlement": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=pb.CheckEntitlementRequest.FromString,
            response_serializer=pb.CheckEntitlementResponse.SerializeToString)})
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", int(reuse_port))])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def serve_main(port: int, reuse_port: bool, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    asyncio.run(_serve(port, reuse_port, use_uvloop))


def start_servers(port: int, processes: int, poll_strategy: str, use_uvloop: bool) -> list[subprocess.Popen]:
    env = {**os.environ, "GRPC_VERBOSITY": "NONE", "GRPC_ENABLE_FORK_SUPPORT": "false"}
    if poll_strategy:
        env["GRPC_POLL_STRATEGY"] = poll_strategy
    procs = []
    for _ in range(processes):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_floor", "--serve", str(port)] + (["--reuse-port"] if processes > 1 else [])
            + (["--uvloop"] if use_uvloop else []), env=env, stdout=subprocess.PIPE, text=True))
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"the floor server did not start (exit {p.poll()})")
    return procs


def measure(seconds: float, clients: int, connections: int, processes: int = 1, poll_strategy: str = "",
            use_uvloop: bool = False, warmup_s: float = 2.0) -> dict:
    binary = ghz.ensure_ghz(Settings().kafka_cache_dir)
    port = free_port()
    procs = start_servers(port, processes, poll_strategy, use_uvloop)
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-floor-"))
    try:
        requests = [{"subscription_id": str(uuid.uuid4()), "feature_code": f} for f in ("sso", "tier", "calls")
                    for _ in range(100)]
        address = f"127.0.0.1:{port}"
        meter = CpuMeter(server=[p.pid for p in procs])
        ghz.run(binary, address, "CheckEntitlement", requests, "floor", concurrency=clients,
                connections=connections, seconds=warmup_s, workdir=work)  # connections up, code warm
        load0 = os.getloadavg()[0]
        before = meter.read()
        r = ghz.run(binary, address, "CheckEntitlement", requests, "floor", concurrency=clients,
                    connections=connections, seconds=seconds, workdir=work)
        cpu = CpuMeter.used(before, meter.read())["server"] or 0.0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    ok = max(1, r["ok"])
    return {"calls_per_s": r["ok_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"],
            "server_us_per_call": round(cpu / ok * 1e6, 1), "client_us_per_call": r["cpu_us_per_call"],
            "processes": processes, "poll_strategy": poll_strategy or "default", "uvloop": use_uvloop,
            "clients": clients, "connections": connections,
            "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def report(figures: dict) -> None:
    print(json.dumps(figures))
    print(f"grpc_floor_calls_per_s={figures['calls_per_s']} p99_ms={figures['p99_ms']} p50_ms={figures['p50_ms']} "
          f"server_us_per_call={figures['server_us_per_call']:.0f} "
          f"client_us_per_call={figures['client_us_per_call']} errors={figures['errors']} "
          f"processes={figures['processes']} load_avg={figures['load_avg'][0]}-{figures['load_avg'][1]}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--floor-processes", "--processes", dest="floor_processes", type=int, default=1,
                        help="floor: server processes on one port (SO_REUSEPORT)")
    parser.add_argument("--poll-strategy", default="", help="floor: GRPC_POLL_STRATEGY of the servers")
    parser.add_argument("--uvloop", action="store_true", help="floor: the servers on uvloop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process itself
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=50, help="concurrent calls (default 50)")
    parser.add_argument("--connections", type=int, default=10, help="ghz's connections (default 10)")
    add_arguments(parser)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve, args.reuse_port, args.uvloop)
        return 0
    started = time.perf_counter()
    report(measure(args.seconds, args.clients, args.connections, args.floor_processes, args.poll_strategy,
                   args.uvloop))
    log(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

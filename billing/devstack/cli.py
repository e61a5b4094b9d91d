"""`billing dev` (what `make run` calls) and `billing devstack up|down`."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from billing import admin
from billing.config import Settings
from billing.devstack.postgres import DevstackError
from billing.devstack.stack import LocalStack


def _stack(settings: Settings, args: argparse.Namespace) -> LocalStack:
    return LocalStack.create(
        settings.state_dir, pg_port=args.pg_port, kafka_port=args.kafka_port, controller_port=args.controller_port,
        kafka_version=settings.kafka_version, kafka_cache_dir=settings.kafka_cache_dir,
    )


def run_devstack(settings: Settings, args: argparse.Namespace) -> int:
    stack = _stack(settings, args)
    try:
        if args.action == "up":
            stack.start(settings.readiness_timeout_s)
            for key, value in stack.env().items():
                print(f"export {key}={value}")
        else:
            stack.stop()
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    return 0


async def _demo_tenant(settings: Settings) -> dict:
    """The demo tenant's key is kept in the state directory so every `make run` shows the same one."""
    path = settings.state_dir / "demo-tenant.json"
    if path.exists():
        return json.loads(path.read_text())
    tenant = await admin.create_tenant(settings, "demo")
    path.write_text(json.dumps(tenant))
    return tenant


def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from billing.kafka import ensure_topics
    from billing.ops.logging import configure
    from billing.runtime import serve

    configure(settings.log_level)
    stack = _stack(settings, args)
    try:
        stack.start(settings.readiness_timeout_s)
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    try:
        settings = Settings(**{k.removeprefix("BILLING_").lower(): v for k, v in stack.env().items()})
        asyncio.run(admin.migrate(settings))
        ensure_topics(settings)
        tenant = asyncio.run(_demo_tenant(settings))
        print(
            "\n".join([
                "",
                "billing service on the local stack",
                f"  gRPC     {settings.grpc_host}:{settings.grpc_port}   (service billing.v1.BillingService)",
                f"  HTTP     http://{settings.http_host}:{settings.http_port}   (/healthz /readyz /metrics)",
                f"  Kafka    {stack.kafka.bootstrap_servers}",
                f"  Postgres {stack.postgres.app_url}",
                f"  demo tenant {tenant['tenant_id']}",
                f"  API key     {tenant['api_key']}",
                "  (send it as gRPC metadata  authorization: Bearer <key>;  Ctrl-C stops everything)",
                "",
            ]),
            flush=True,
        )
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0

"""`billing dev` (what `make run` calls) and `billing devstack up|down`."""
from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path

from billing import admin
from billing.config import STACK_ENV_FILE, Settings
from billing.devstack.postgres import DevstackError
from billing.devstack.stack import LocalStack


def _stack(settings: Settings, args: argparse.Namespace) -> LocalStack:
    return LocalStack.create(
        settings.state_dir, pg_port=args.pg_port, kafka_port=args.kafka_port, controller_port=args.controller_port,
        kafka_version=settings.kafka_version, kafka_cache_dir=settings.kafka_cache_dir,
        brokers=getattr(args, "brokers", 1), sasl=getattr(args, "sasl", False),
    )


def write_env_file(settings: Settings, env: dict[str, str]) -> Path:
    """The stack's settings in <state dir>/env, which every `billing` command and Settings()
    read while it exists (the environment wins); removed when the stack stops."""
    path = settings.state_dir / STACK_ENV_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items()))
    return path


def remove_env_file(settings: Settings) -> None:
    (settings.state_dir / STACK_ENV_FILE).unlink(missing_ok=True)


def export_lines(env: dict[str, str]) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


def run_devstack(settings: Settings, args: argparse.Namespace) -> int:
    stack = _stack(settings, args)
    try:
        if args.action == "up":
            stack.start(settings.readiness_timeout_s)
            path = write_env_file(settings, stack.env())
            print(f"# written to {path}, read by every billing command; for other tools:")
            print(export_lines(stack.env()))
        else:
            remove_env_file(settings)
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
    stack_settings = settings  # whose state directory holds the env file
    stack = _stack(settings, args)
    try:
        stack.start(settings.readiness_timeout_s)
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    try:
        path = write_env_file(settings, stack.env())
        settings = Settings(**stack.settings_kwargs())
        asyncio.run(admin.migrate(settings))
        ensure_topics(settings)
        tenant = asyncio.run(_demo_tenant(settings))
        # The client commands (billing plans|subscriptions|runs|seed) call this API as the demo tenant.
        host = "127.0.0.1" if settings.grpc_host in ("0.0.0.0", "::") else settings.grpc_host
        write_env_file(stack_settings, {**stack.env(), "BILLING_API_ADDRESS": f"{host}:{settings.grpc_port}",
                                        "BILLING_API_KEY": tenant["api_key"]})
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
                f"every billing command reads the stack's settings from {path} while it runs",
                "(the demo tenant's key included): try  billing seed  then  billing invoices tail --from-beginning",
                "for other tools:",
                export_lines(stack.env()),
                "for the README's examples (grpcurl, Python):",
                export_lines({"KEY": tenant["api_key"], "GRPC": f"{settings.grpc_host}:{settings.grpc_port}",
                              "KAFKA": stack.kafka.bootstrap_servers}),
                "",
            ]),
            flush=True,
        )
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    finally:
        remove_env_file(stack_settings)
        stack.stop()
    return 0

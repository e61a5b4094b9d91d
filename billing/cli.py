"""The `billing` command: serve, migrate, tenants, dev (the local stack)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from billing import admin
from billing.config import Settings


def _settings(warn: bool = True) -> Settings:
    settings = Settings()
    if warn:
        from billing.config import warn_unknown_env

        warn_unknown_env()
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from billing.ops.logging import configure
    from billing.runtime import ALL_ROLES, serve

    from billing.config import warn_unknown_env

    settings = _settings(warn=False)
    configure(settings.log_level)
    warn_unknown_env()
    roles = tuple(r.strip() for r in args.roles.split(",")) if args.roles else ALL_ROLES
    if args.setup:
        from billing.kafka import ensure_topics

        asyncio.run(admin.migrate(settings))
        ensure_topics(settings)
    from billing.store.roles import UnsafeDatabaseRole

    try:
        return asyncio.run(serve(settings, roles))
    except UnsafeDatabaseRole as exc:
        print(f"billing serve refused to start: {exc}", file=sys.stderr)
        return 2


def cmd_migrate(_: argparse.Namespace) -> int:
    from billing.store.migrations import MigrationError

    try:
        applied = asyncio.run(admin.migrate(_settings()))
    except MigrationError as exc:
        print(f"migration refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"applied": applied}))
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(admin.create_tenant(_settings(), args.name))))
    return 0


def cmd_tenants_revoke_key(args: argparse.Namespace) -> int:
    revoked = asyncio.run(admin.revoke_key(_settings(), args.api_key_id))
    print(json.dumps({"api_key_id": args.api_key_id, "revoked": revoked}))
    return 0 if revoked else 1


def cmd_topics(_: argparse.Namespace) -> int:
    """Create missing topics, check every topic against the replication settings; exit 1
    on a topic that could not be created, one below the settings, or Kafka unreachable."""
    from billing.kafka_topics import sync

    report = sync(_settings())
    print(json.dumps(report.as_dict()))
    for topic, why in report.failed.items():
        print(f"topic {topic} not created: {why}", file=sys.stderr)
    for problem in report.problems:
        print(f"topic {problem}", file=sys.stderr)
    if report.unchecked:
        print(f"topics not checked: {report.unchecked}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_dev(args: argparse.Namespace) -> int:
    from billing.devstack.cli import run_dev

    return run_dev(_settings(), args)


def cmd_devstack(args: argparse.Namespace) -> int:
    from billing.devstack.cli import run_devstack

    return run_devstack(_settings(), args)


def cmd_produce_usage(args: argparse.Namespace) -> int:
    from producers.load import run_cli

    return run_cli(_settings(), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="billing", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the service (all roles, or --roles)")
    p.add_argument("--roles", default="", help="comma-separated roles; default: all")
    p.add_argument("--setup", action="store_true", help="apply pending migrations and create missing topics first")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply pending migrations (as BILLING_ADMIN_DATABASE_URL)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("topics", help="create the service's Kafka topics that do not exist yet and check "
                                       "every topic's replication factor and min.insync.replicas (exit 1 if below)")
    p.set_defaults(func=cmd_topics)

    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="tenants_command", required=True)
    p = tenants.add_parser("create", help="create a tenant; prints its id and a new API key as JSON")
    p.add_argument("name")
    p.set_defaults(func=cmd_tenants_create)
    p = tenants.add_parser("revoke-key", help="revoke an API key by its id; refused at once")
    p.add_argument("api_key_id")
    p.set_defaults(func=cmd_tenants_revoke_key)

    p = sub.add_parser("dev", help="start the local stack, migrate, create a demo tenant, serve (make run)")
    p.add_argument("--pg-port", type=int, default=55432)
    p.add_argument("--kafka-port", type=int, default=59092)
    p.add_argument("--controller-port", type=int, default=59093)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("devstack", help="start or stop only the local PostgreSQL and Kafka")
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--pg-port", type=int, default=55432)
    p.add_argument("--kafka-port", type=int, default=59092)
    p.add_argument("--controller-port", type=int, default=59093)
    p.set_defaults(func=cmd_devstack)

    from producers.load import add_arguments as produce_usage_arguments

    p = sub.add_parser("produce-usage", help="load generator: produce usage events to Kafka, print a JSON summary")
    produce_usage_arguments(p)
    p.set_defaults(func=cmd_produce_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:  # a bad setting: say which, no traceback
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                           for e in exc.errors())
        print(f"configuration refused: {errors}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # e.g. a JSON setting that is not JSON
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        print(f"configuration refused: {exc}{cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

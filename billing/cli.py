"""The `billing` command: serve, migrate, topics, tenants, dev (the local stack), and the
client commands that call the API (plans, subscriptions, runs, clocks, discounts, credits,
seed) or read Kafka (invoices).

Every failure is one line on stderr and a non-zero exit code (`billing serve` writes it as a
JSON log line, like the rest of its log); `--debug` adds the traceback. Commands that need
a server check first that it answers (billing/ops/reach.py), so a wrong address fails within
seconds, naming the address and the setting that changes it.
"""
from __future__ import annotations

import os

# gRPC's C core writes its own lines on stderr (not JSON), such as fork_posix.cc's "Other
# threads are currently calling into gRPC, skipping fork() handlers" when a process with gRPC
# threads forks (the devstack's and the tests' subprocesses). Fork support is off (the service
# never forks a process that then uses gRPC) and the core only speaks on errors; its errors
# reach us as Python exceptions, logged as JSON. Set before anything imports grpc; an
# operator's own value wins (GRPC_VERBOSITY=debug to see the core's detail).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402

from billing import admin  # noqa: E402
from billing.cli_common import CommandError  # noqa: E402
from billing.config import Settings  # noqa: E402
from billing.ops import reach  # noqa: E402

log = logging.getLogger("billing.cli")


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        return _version("billing-service")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _settings(warn: bool = True) -> Settings:
    settings = Settings()
    if warn:
        from billing.config import warn_unknown_env

        warn_unknown_env()
    return settings


def _admin_settings() -> Settings:
    settings = _settings()
    reach.check_postgres(settings.admin_database_url, "BILLING_ADMIN_DATABASE_URL")
    return settings


def check_can_serve(settings: Settings, roles: tuple[str, ...], grpc_shared: bool = False) -> None:
    """What `billing serve` needs before it starts: the migration files, its ports free, the
    database of each role and (for the Kafka roles) a broker reachable. `grpc_shared`: an
    extra API process, whose gRPC port the first process holds already (SO_REUSEPORT)."""
    from billing.runtime import ALL_ROLES, KAFKA_ROLES
    from billing.store.migrations import load_migrations

    unknown = sorted(set(roles) - set(ALL_ROLES))
    if unknown:
        raise CommandError(f"unknown roles {', '.join(unknown)}; known: {', '.join(ALL_ROLES)} (--roles)")
    load_migrations(settings.migrations_dir)
    listen = [("HTTP", settings.http_host, settings.http_port, "BILLING_HTTP_HOST/BILLING_HTTP_PORT")]
    if "api" in roles and not grpc_shared:
        listen.append(("gRPC", settings.grpc_host, settings.grpc_port, "BILLING_GRPC_HOST/BILLING_GRPC_PORT"))
    for what, host, port, setting in listen:
        reach.check_can_listen(what, host, port, setting)
    workers = [r for r in roles if r != "api"]
    if "api" in roles or not workers:
        reach.check_postgres(settings.database_url, "BILLING_DATABASE_URL")
    if workers:
        reach.check_postgres(settings.worker_database_url, "BILLING_WORKER_DATABASE_URL")
    if set(roles) & KAFKA_ROLES:
        reach.check_kafka(settings.kafka_bootstrap_servers)


def cmd_serve(args: argparse.Namespace) -> int:
    from billing.config import warn_unknown_env
    from billing.ops.logging import configure
    from billing.runtime import ALL_ROLES, serve

    configure("INFO")  # a refused setting is logged as JSON too
    settings = _settings(warn=False)
    configure(settings.log_level)
    warn_unknown_env()
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip()) if args.roles else ALL_ROLES
    if args.api_process:  # started by the first process (billing/api_processes.py)
        from billing.api_processes import settings_of_process

        settings, roles = settings_of_process(settings, args.api_process), ("api",)
    check_can_serve(settings, roles, grpc_shared=bool(args.api_process))
    if args.setup:
        from billing.kafka import ensure_topics

        reach.check_postgres(settings.admin_database_url, "BILLING_ADMIN_DATABASE_URL")
        asyncio.run(admin.migrate(settings))
        ensure_topics(settings)
    if settings.event_loop == "uvloop":
        import uvloop  # BILLING_EVENT_LOOP (default uvloop); not installed on Windows: set it to asyncio

        return uvloop.run(serve(settings, roles, api_process=args.api_process))
    return asyncio.run(serve(settings, roles, api_process=args.api_process))


def cmd_migrate(_: argparse.Namespace) -> int:
    applied = asyncio.run(admin.migrate(_admin_settings()))
    print(json.dumps({"applied": applied}))
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(admin.maintenance(_admin_settings(), keep_detached=args.keep_detached))))
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    if not 1 <= len(args.name.strip()) <= 200:
        raise CommandError(f"tenant name must be 1..200 characters, got {args.name!r}")
    print(json.dumps(asyncio.run(admin.create_tenant(_admin_settings(), args.name))))
    return 0


def cmd_tenants_revoke_key(args: argparse.Namespace) -> int:
    try:
        uuid.UUID(args.api_key_id)
    except ValueError:
        raise CommandError(f"api_key_id must be a UUID (the api_key_id `tenants create` printed), "
                           f"got {args.api_key_id!r}") from None
    revoked = asyncio.run(admin.revoke_key(_admin_settings(), args.api_key_id))
    print(json.dumps({"api_key_id": args.api_key_id, "revoked": revoked}))
    return 0 if revoked else 1


def cmd_tenants_list(_: argparse.Namespace) -> int:
    for tenant in asyncio.run(admin.list_tenants(_admin_settings())):
        print(json.dumps(tenant))
    return 0


def cmd_tenants_rotate_key(args: argparse.Namespace) -> int:
    from billing.services.tenants import UnknownTenant

    try:
        tenant_id = str(uuid.UUID(args.tenant_id))
    except ValueError:
        raise CommandError(f"tenant_id must be a UUID (see `billing tenants list`), got {args.tenant_id!r}") from None
    try:
        print(json.dumps(asyncio.run(admin.rotate_key(_admin_settings(), tenant_id, args.revoke_old))))
    except UnknownTenant:
        raise CommandError(f"no tenant {tenant_id} (see `billing tenants list`)") from None
    return 0


def cmd_invoices_tail(args: argparse.Namespace) -> int:
    from billing.cli_invoices import tail

    settings = _settings()
    reach.check_kafka(settings.kafka_bootstrap_servers)
    return tail(settings, args)


def cmd_seed(args: argparse.Namespace) -> int:
    from billing.cli_seed import seed

    return seed(_settings(), args)


def cmd_topics(_: argparse.Namespace) -> int:
    """Create missing topics, check every topic against the replication settings; exit 1
    on a topic that could not be created, one below the settings, or Kafka unreachable."""
    from billing.kafka_topics import sync

    settings = _settings()
    reach.check_kafka(settings.kafka_bootstrap_servers)
    report = sync(settings)
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

    settings = _settings()
    reach.check_kafka(settings.kafka_bootstrap_servers)
    return run_cli(settings, args)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too (argparse prints the whole usage first); subcommands
    inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (--help for usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="billing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"billing {version()}")
    parser.add_argument("--debug", action="store_true", help="on failure, show the traceback too")
    # --debug after the command too (`billing migrate --debug`); SUPPRESS keeps the top-level value.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on failure, show the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    p = command("serve", help="run the service (all roles, or --roles)")
    p.add_argument("--roles", default="", help="comma-separated roles; default: all")
    p.add_argument("--setup", action="store_true", help="apply pending migrations and create missing topics first")
    p.add_argument("--api-process", type=int, default=0, help=argparse.SUPPRESS)  # BILLING_GRPC_PROCESSES
    p.set_defaults(func=cmd_serve)

    p = command("migrate", help="apply pending migrations (as BILLING_ADMIN_DATABASE_URL)")
    p.set_defaults(func=cmd_migrate)

    p = command("maintenance", help="usage partitions: create this month's and the next ones (as the service's "
                                    "scheduler does), then apply the retention settings (BILLING_USAGE_RETENTION_MONTHS, "
                                    "..._OUTBOX_..., ..._AUDIT_DETACH_..., ..._IDEMPOTENCY_RETENTION_DAYS; as "
                                    "BILLING_ADMIN_DATABASE_URL); prints what it did as JSON")
    p.add_argument("--keep-detached", action="store_true",
                   help="detach expired partitions but do not drop them (to archive them first)")
    p.set_defaults(func=cmd_maintenance)

    p = command("topics", help="create the service's Kafka topics that do not exist yet and check "
                               "every topic's replication factor and min.insync.replicas (exit 1 if below)")
    p.set_defaults(func=cmd_topics)

    tenants = command("tenants", help="manage tenants").add_subparsers(dest="tenants_command", required=True)
    p = tenants.add_parser("create", parents=[common], help="create a tenant; prints its id and a new API key as JSON")
    p.add_argument("name")
    p.set_defaults(func=cmd_tenants_create)
    p = tenants.add_parser("revoke-key", parents=[common], help="revoke an API key by its id; refused at once")
    p.add_argument("api_key_id")
    p.set_defaults(func=cmd_tenants_revoke_key)
    p = tenants.add_parser("list", parents=[common], help="every tenant as JSON lines: id, name, created_at, "
                                                          "live_keys")
    p.set_defaults(func=cmd_tenants_list)
    p = tenants.add_parser("rotate-key", parents=[common], help="issue a new API key for a tenant (shown once); "
                                                                "--revoke-old revokes its other keys with it")
    p.add_argument("tenant_id")
    p.add_argument("--revoke-old", action="store_true",
                   help="revoke every other live key of the tenant in the same transaction")
    p.set_defaults(func=cmd_tenants_rotate_key)

    # Client commands: over the gRPC API, as a tenant (billing/cli_common.py).
    from billing import (
        cli_catalog, cli_clocks, cli_credits, cli_discounts, cli_entitlements, cli_invoices, cli_runs, cli_seed,
        cli_thresholds,
    )

    cli_catalog.add_parsers(sub, common)
    cli_runs.add_parsers(sub, common)
    cli_clocks.add_parsers(sub, common)
    cli_discounts.add_parsers(sub, common)
    cli_credits.add_parsers(sub, common)
    cli_entitlements.add_parsers(sub, common)
    cli_thresholds.add_parsers(sub, common)
    cli_invoices.add_parsers(sub, common, cmd_invoices_tail)
    cli_seed.add_parsers(sub, common, cmd_seed)

    p = command("dev", help="start the local stack, migrate, create a demo tenant, serve (make run)")
    p.add_argument("--pg-port", type=int, default=55432)
    p.add_argument("--kafka-port", type=int, default=59092)
    p.add_argument("--controller-port", type=int, default=59093)
    p.set_defaults(func=cmd_dev)

    p = command("devstack", help="start or stop only the local PostgreSQL and Kafka")
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--pg-port", type=int, default=55432)
    p.add_argument("--kafka-port", type=int, default=59092, help="the first broker's; the next ones +2, +4, ...")
    p.add_argument("--controller-port", type=int, default=59093, help="the first controller's; the next ones +2, ...")
    p.add_argument("--brokers", type=int, default=1, help="KRaft nodes (broker and controller each); 3 for a cluster")
    p.add_argument("--sasl", action="store_true", help="SASL_SSL (SCRAM-SHA-512) with TLS certificates made at start")
    p.set_defaults(func=cmd_devstack)

    from producers.load import add_arguments as produce_usage_arguments

    p = command("produce-usage", help="load generator: produce usage events to Kafka, print a JSON summary")
    produce_usage_arguments(p)
    p.set_defaults(func=cmd_produce_usage)
    return parser


def _expected() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from billing.kafka_topics import UnderReplicatedTopics
    from billing.store.migrations import MigrationError
    from billing.store.roles import UnsafeDatabaseRole

    return (CommandError, reach.Unreachable, ValueError, ValidationError, SettingsError, MigrationError,
            UnsafeDatabaseRole, UnderReplicatedTopics)


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from billing.store.migrations import MigrationError

    if isinstance(exc, ValidationError):  # a bad setting: say which
        return "configuration refused: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors())
    if isinstance(exc, SettingsError):  # e.g. a JSON setting that is not JSON
        return f"configuration refused: {exc}" + (f": {exc.__cause__}" if exc.__cause__ else "")
    if isinstance(exc, MigrationError):
        return f"migration refused: {exc}"
    if isinstance(exc, _expected()):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends here as one line
        name = "billing " + " ".join(filter(None, [args.command, getattr(args, f"{args.command}_command", None)]))
        line = " ".join(_one_line(exc).split())  # one line, whatever the message held
        expected = isinstance(exc, _expected())
        if args.command == "serve":  # the service's log is JSON: so is its last line
            log.error(f"{name} failed: {line}", exc_info=exc if args.debug else None,
                      extra={"error": type(exc).__name__})
        else:
            if args.debug:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            hint = "" if expected or args.debug else " (--debug shows the traceback)"
            print(f"{name}: {line}{hint}", file=sys.stderr)
        return 2 if expected else 1


if __name__ == "__main__":
    sys.exit(main())

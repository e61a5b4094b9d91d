"""Settings, read from environment variables with the BILLING_ prefix.

Every address the service talks to is a setting, so pointing it at an existing
PostgreSQL and Kafka needs no code change (see the Configuration section of README.md).
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from billing import kafka_properties
from billing.resources import migrations_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The file `billing dev` / `billing devstack up` write in the state directory.
STACK_ENV_FILE = "env"


def default_state_dir() -> Path:
    """A source checkout (editable install): its .state, where `make run` keeps the stack.
    An installed wheel: $XDG_STATE_HOME/billing-service (~/.local/state/billing-service)."""
    if (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "billing").is_dir():
        return PROJECT_ROOT / ".state"
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "billing-service"


def stack_env_file(init_kwargs: Mapping[str, Any] | None = None,
                   environ: Mapping[str, str] | None = None) -> Path | None:
    """The local stack's settings file Settings reads: BILLING_ENV_FILE (or env_file=) when
    set ("" turns the file off), else <state dir>/env. None: no file is read."""
    init_kwargs = init_kwargs or {}
    environ = os.environ if environ is None else environ
    explicit = init_kwargs.get("env_file", environ.get("BILLING_ENV_FILE"))
    if explicit is not None:
        return Path(explicit) if str(explicit) else None
    state = init_kwargs.get("state_dir") or environ.get("BILLING_STATE_DIR")
    return (Path(state) if state else default_state_dir()) / STACK_ENV_FILE


class Topics(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_TOPIC_", extra="ignore")

    usage: str = "billing.usage.v1"
    usage_dlq: str = "billing.usage.dlq.v1"
    subscription_commands: str = "billing.subscription-commands.v1"
    subscription_commands_dlq: str = "billing.subscription-commands.dlq.v1"
    subscription_events: str = "billing.subscription-events.v1"
    billing_runs: str = "billing.billing-runs.v1"
    billing_runs_dlq: str = "billing.billing-runs.dlq.v1"
    invoice_requests: str = "billing.invoice-requests.v1"
    usage_alerts: str = "billing.usage-alerts.v1"

    def all(self) -> list[str]:
        return list(self.model_dump().values())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    # The API's role, which row-level security applies to (see worker_database_url below).
    database_url: str = "postgresql://billing_app:billing_app@127.0.0.1:5432/billing"
    # Migrations and admin commands (tenants create) connect as the schema owner.
    admin_database_url: str = "postgresql://billing_owner:billing_owner@127.0.0.1:5432/billing"
    # Database roles (docs/operations.md, "Database roles"): database_url is the API's role,
    # which enters a tenant only through an API key; the consumers, the scheduler and the
    # relay connect as the worker role, which may enter any tenant (their messages name it).
    # The service refuses to start as a role that bypasses row-level security.
    worker_database_url: str = "postgresql://billing_worker:billing_worker@127.0.0.1:5432/billing"
    db_pool_min: int = 2
    db_pool_max: int = 10

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # librdkafka properties for EVERY Kafka client the service and its tools create
    # (security.protocol, sasl.*, ssl.*, ...): a JSON object, and/or a Java .properties
    # file; the JSON wins for a key in both. `file:/path` values are read from that file.
    # Properties the service's guarantees need are refused (billing/kafka_properties.py).
    kafka_config: dict[str, str] = Field(default_factory=dict)
    kafka_config_file: Path | None = None
    # Topics `billing topics` creates, and the floor it (and the service at start) checks
    # existing topics against. The one-broker local stack sets both to 1.
    kafka_replication_factor: int = Field(default=3, ge=1)
    kafka_min_insync_replicas: int = Field(default=2, ge=1)
    # Per topic (by name, or by its BILLING_TOPIC_* key such as "usage"): "partitions",
    # "replication.factor", and any topic config ("retention.ms", "min.insync.replicas", ...).
    kafka_topic_config: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Start anyway on topics below the replication settings (a warning is logged).
    kafka_accept_under_replicated: bool = False
    # Bounded consumption (docs/kafka.md): the most a consumer fetches at once, and the
    # largest message value (after decompression) the usage and command consumers accept;
    # larger ones are dead-lettered with the reason `too_large`.
    kafka_fetch_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    kafka_max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    kafka_partitions: int = 6
    # How long the group waits for a consumer that vanished (SIGKILL, lost host) before
    # handing its partitions to the others. Kafka's default is 45 s; 10 s fails over faster.
    kafka_session_timeout_ms: int = 10_000
    topics: Topics = Field(default_factory=Topics)
    # Interoperability (docs/kafka.md, "Wire formats"): the Avro framing the relay writes,
    # "single-object" (C3 01 + fingerprint, no registry needed) or "confluent" (00 + schema
    # id of the registry at schema_registry_url, subjects <topic>-value). With a registry URL
    # set, every reader accepts both, told apart by the first byte, whatever the writers use.
    kafka_wire_format: Literal["single-object", "confluent"] = "single-object"
    schema_registry_url: str = ""
    # More properties of confluent-kafka's SchemaRegistryClient (JSON, e.g. basic.auth.user.info).
    schema_registry_config: dict[str, str] = Field(default_factory=dict)
    # CloudEvents `ce_source` of every message the relay publishes.
    cloudevents_source: str = "/billing-service"

    # Usage: events further ahead than this are dead-lettered (a producer's clock gone wrong),
    # and so are events older than the window (too late to bill).
    usage_max_future_skew_s: int = 300
    usage_max_age_days: int = 35
    usage_batch_size: int = 20_000
    # How long the usage consumer gathers a batch when the topic has fewer events than a
    # batch waiting: the most an event waits before its transaction starts (and with it a
    # threshold alert, docs/alerts.md). Shorter: lower alert lag, more transactions when quiet.
    usage_batch_wait_ms: float = Field(default=500.0, gt=0, le=10_000)
    # RecordUsage group commit: calls of a tenant arriving within this many milliseconds
    # share one transaction (each still answered with its own outcome, after the commit),
    # up to usage_group_commit_max calls; 0 = one transaction per call.
    usage_group_commit_ms: float = Field(default=2.0, ge=0, le=1000)
    usage_group_commit_max: int = Field(default=200, ge=1, le=10_000)
    # ... and up to this many events (a batch counts its events): larger groups cost less
    # CPU per event in PostgreSQL, smaller ones answer sooner (docs/usage.md).
    usage_group_commit_max_events: int = Field(default=20_000, ge=1, le=100_000)
    # Group transactions of a tenant in flight at once (per process): with 2, one group's
    # Python overlaps the other's statements in PostgreSQL, for more calls/s and a lower p99
    # with a core to spare, but smaller groups cost more CPU per call (docs/usage.md).
    usage_groups_in_flight: int = Field(default=1, ge=1, le=16)
    # The consumer stops (rather than dead-letter a whole broken stream) above this share.
    usage_max_bad_share: float = 0.5

    # The billing scheduler (role `scheduler`) starts a run per tenant every this many
    # seconds, with as_of at the start of the slot; 0 turns it off.
    scheduler_interval_s: int = 3600
    # Every billing run is split into this many shards (BILLING_RUN_SHARDS): one run request
    # each, keyed so they spread over the partitions of the billing-runs topic and so over
    # the billing consumers of the group; the run completes when all shards have.
    run_shards: int = 1
    # Automatic resumption (role `scheduler`): every this many seconds, paused subscriptions
    # whose pause_resumes_at has come are resumed, as of that time; 0 turns it off.
    auto_resume_interval_s: float = 60.0
    # Subscriptions resumed per transaction by that pass (it repeats until none is left).
    auto_resume_batch_size: int = 500
    # usage_events partitions (docs/usage.md, "Partitions and retention"): the scheduler role
    # creates this month's and the next N months' every interval (0: not by the service);
    # `billing maintenance` applies the retention: raw usage kept this many months after its
    # period was billed (and past the late window); 0 keeps it forever.
    usage_partitions_ahead_months: int = Field(default=3, ge=1, le=24)
    partition_maintenance_interval_s: float = Field(default=3600.0, ge=0)
    usage_retention_months: int = Field(default=0, ge=0, le=1200)
    # Published outbox rows kept this many days (whole months go, `billing maintenance`); 0: forever.
    outbox_retention_days: int = Field(default=0, ge=0, le=36500)
    # Audit months detached (kept as tables, never dropped by the service) this many months after they end; 0: never.
    audit_detach_months: int = Field(default=0, ge=0, le=1200)
    # Idempotency keys (request_id, command_id) kept this many days (`billing maintenance`); a
    # replay of a key deleted since is a new request (docs/api.md); 0: forever.
    idempotency_retention_days: int = Field(default=0, ge=0, le=36500)

    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_host: str = "127.0.0.1"
    http_port: int = 8080

    # gRPC transport security and overload (docs/operations.md). Certificate and key both set:
    # TLS; a client CA set as well: mutual TLS (clients must present a certificate it signed).
    # No certificate: plaintext, logged as a warning at start.
    grpc_tls_cert_file: Path | None = None
    grpc_tls_key_file: Path | None = None
    grpc_tls_client_ca_file: Path | None = None
    # Calls handled at once by this process; beyond it a call is answered RESOURCE_EXHAUSTED
    # at once (health checks and reflection are never refused). 0: no bound.
    grpc_max_concurrent_calls: int = 200
    # API processes sharing grpc_port (SO_REUSEPORT; the kernel spreads the connections): the
    # first runs every role asked for, the others the api alone, each with its own pool
    # (db_pool_max each) and group-commit window, and its own HTTP side port, http_port + i
    # (docs/operations.md, "Several API processes"). 1: one process.
    grpc_processes: int = Field(default=1, ge=1, le=64)
    # The event loop of `billing serve`: "uvloop" (libuv's loop, a dependency) costs less CPU
    # per gRPC call than asyncio's own (docs/performance.md, "The gRPC per-call floor");
    # "asyncio" is there for a platform without uvloop or to rule the loop out.
    event_loop: Literal["asyncio", "uvloop"] = "asyncio" if sys.platform == "win32" else "uvloop"
    # How long an API key -> tenant entry may be reused by a process that listens for key
    # changes (billing/services/api_keys.py); 0: ask the database on every call.
    api_key_cache_ttl_s: float = Field(default=60.0, ge=0, le=3600)
    # On SIGTERM: health turns NOT_SERVING, calls are still answered for this long (load
    # balancers see the change and stop sending), then the server closes and the roles stop.
    shutdown_drain_s: float = 5.0
    # In-flight calls get this long to finish once the server closes.
    shutdown_grace_s: float = 5.0

    log_level: str = "INFO"
    # Tracing (docs/operations.md): spans are always made (log lines carry their ids) and
    # exported over OTLP only when an endpoint is set here or in the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT; none by default. The OTEL_* variables are honoured; these
    # settings win over them only when set explicitly (billing/ops/tracing.py, resolve).
    tracing_enabled: bool = True
    otlp_endpoint: str = ""
    otel_service_name: str = "billing-service"
    trace_sample_ratio: float = 1.0
    # Readiness includes Kafka (reachable, topics present). An api-only replica may turn this
    # off so it keeps serving through a Kafka outage (its events wait in the outbox).
    readiness_requires_kafka: bool = True
    # How often the relay role samples the outbox backlog gauges.
    outbox_backlog_interval_s: float = 5.0
    # Outbox rows per relay batch, and batches published at once (the next is produced while
    # the previous one's deliveries are awaited and marked; never two sharing a key).
    relay_batch_size: int = Field(default=1000, ge=1, le=100_000)
    relay_max_in_flight: int = Field(default=2, ge=1, le=16)
    # The numbered SQL files `billing migrate` applies and readiness checks: by default the
    # ones installed with the code (migrations/ of the repository, billing/resources.py).
    migrations_dir: Path = Field(default_factory=migrations_dir)
    # Where `billing dev` keeps PostgreSQL data, Kafka logs, the Kafka jars' classpath and
    # the stack's settings file (default_state_dir above).
    state_dir: Path = Field(default_factory=default_state_dir)
    # The local stack's settings file (stack_env_file above): read when it exists, below
    # explicit values and the environment, so every command finds the stack `billing dev`
    # started. "" reads no file (the test suite sets that).
    env_file: str | None = None
    # Kafka jars are resolved once with Maven and cached here, outside the work tree.
    kafka_cache_dir: Path = Path.home() / ".cache" / "billing-devstack"
    kafka_version: str = "4.1.1"
    # Seconds to wait for PostgreSQL or Kafka to become ready before giving up.
    readiness_timeout_s: float = 90.0

    # API page tokens are signed with this key (HMAC-SHA256), binding each to its method,
    # filters and tenant. Set the same value on every api replica behind one address; unset,
    # each process draws a random key, so a token works only on the replica that issued it
    # and until it restarts.
    page_token_secret: SecretStr = SecretStr("")

    # Read by the `billing` commands that call the API as a client (plans, subscriptions,
    # runs, seed; billing/cli_common.py), never by the service: the API's address (empty:
    # grpc_host:grpc_port) and the tenant's key. `billing dev` writes both to the stack's
    # settings file, the key being the demo tenant's.
    api_address: str = ""
    api_key: SecretStr = SecretStr("")
    # TLS to that API (the service's BILLING_GRPC_TLS_*): the CA that signed its certificate
    # (set = TLS; unset = plaintext), and a client certificate and key for mutual TLS.
    api_tls_ca_file: Path | None = None
    api_tls_cert_file: Path | None = None
    api_tls_key_file: Path | None = None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit values, then the environment, then the stack's file, then defaults.
        path = stack_env_file(getattr(init_settings, "init_kwargs", None))
        stack = [DotEnvSettingsSource(settings_cls, env_file=path)] if path is not None and path.is_file() else []
        return (init_settings, env_settings, *stack, file_secret_settings)

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _kafka_config_text(cls, value):
        # JSON numbers and booleans are accepted and passed on as librdkafka text. A keyword
        # argument may carry the variable's JSON text, as the environment does.
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"BILLING_KAFKA_CONFIG is not a JSON object: {exc}") from None
            if not isinstance(value, dict):
                raise ValueError("BILLING_KAFKA_CONFIG is not a JSON object")
        if isinstance(value, dict):
            return {str(k): kafka_properties.stringify(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _wire_format_needs_registry(self) -> "Settings":
        if self.kafka_wire_format == "confluent" and not self.schema_registry_url:
            raise ValueError("BILLING_KAFKA_WIRE_FORMAT=confluent needs BILLING_SCHEMA_REGISTRY_URL (the registry "
                             "that gives the schema ids)")
        return self

    @model_validator(mode="after")
    def _processes_share_a_known_port(self) -> "Settings":
        if self.grpc_processes > 1 and (self.grpc_port == 0 or self.http_port == 0):
            raise ValueError("BILLING_GRPC_PROCESSES > 1 needs a fixed BILLING_GRPC_PORT and BILLING_HTTP_PORT (not 0): "
                             "the processes share the first and take the ports after the second")
        return self

    @model_validator(mode="after")
    def _kafka_checks(self) -> "Settings":
        kafka_properties.check(kafka_properties.merged(self.kafka_config, self.kafka_config_file))
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(f"BILLING_KAFKA_MIN_INSYNC_REPLICAS ({self.kafka_min_insync_replicas}) must not exceed "
                             f"BILLING_KAFKA_REPLICATION_FACTOR ({self.kafka_replication_factor}): every acks=all "
                             "write would fail")
        from billing.kafka_topics import check_topic_config

        check_topic_config(self)
        # librdkafka (2.16) refuses a zstd batch of unstated size whose compressed size passes
        # half of receive.message.max.bytes: an accepted message must stay below that.
        if self.kafka_fetch_max_bytes < 2 * self.kafka_max_message_bytes:
            raise ValueError("BILLING_KAFKA_FETCH_MAX_BYTES must be at least twice BILLING_KAFKA_MAX_MESSAGE_BYTES")
        return self


# Prefixes of variables that are not Settings fields: the test harness's own.
# Read elsewhere, not settings: the tests' own switches, and billing/native.py's BILLING_NATIVE.
_NOT_SETTINGS = ("BILLING_TEST_", "BILLING_NATIVE")


def unknown_env(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """BILLING_* variables no setting reads, each with the closest known name (or None).
    A typo (BILLING_KAFKA_BOOTSTRAP_SERVER) would otherwise be silently ignored."""
    environ = os.environ if environ is None else environ
    known = {f"BILLING_{name.upper()}" for name in Settings.model_fields}
    known |= {f"BILLING_TOPIC_{name.upper()}" for name in Topics.model_fields}
    out = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("BILLING_") or upper in known or upper.startswith(_NOT_SETTINGS):
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
        out.append((name, close[0] if close else None))
    return out


def warn_unknown_env(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """Log a warning per unknown BILLING_* variable (see unknown_env); return them."""
    found = unknown_env(environ)
    for name, close in found:
        logging.getLogger("billing.config").warning(
            "unknown setting %s is ignored%s", name, f"; did you mean {close}?" if close else "",
            extra={"variable": name, "did_you_mean": close})
    return found

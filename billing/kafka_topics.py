"""The service's topics: how they are created, and the check of existing ones.

Each topic is created with BILLING_KAFKA_PARTITIONS partitions, replication factor
BILLING_KAFKA_REPLICATION_FACTOR and min.insync.replicas BILLING_KAFKA_MIN_INSYNC_REPLICAS,
unless BILLING_KAFKA_TOPIC_CONFIG says otherwise for it. An existing topic below its
replication factor or min.insync.replicas is a problem: with acks=all, a topic at
replication factor 1 (or min.insync.replicas=1) loses acknowledged events with one disk.
`billing topics` reports problems (exit 1); the service refuses to start on them unless
BILLING_KAFKA_ACCEPT_UNDER_REPLICATED is true. Topics are never altered here: raising the
replication factor of a topic is a partition reassignment, an operator's decision
(docs/operations.md).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from billing.config import Settings

log = logging.getLogger(__name__)

MIN_ISR = "min.insync.replicas"
_OWN_KEYS = ("partitions", "replication.factor")
# The topics the service consumes are stored in zstd whatever producers send (the broker
# recompresses): librdkafka caps the decompressed size of zstd batches only, so this is
# what keeps a small compressed message from expanding to gigabytes in a consumer
# (consumers/limits.py). A per-topic compression.type in BILLING_KAFKA_TOPIC_CONFIG wins.
_CONSUMED_DEFAULTS = {"compression.type": "zstd"}
_CONSUMED = ("usage", "subscription_commands", "billing_runs")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]  # topic configs given at creation, min.insync.replicas included

    @property
    def min_insync_replicas(self) -> int:
        return int(self.config[MIN_ISR])


@dataclass
class TopicsReport:
    created: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # topic -> why it could not be created
    problems: list[str] = field(default_factory=list)  # existing topics below the settings
    unchecked: str = ""  # why the check could not run (Kafka unreachable)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems and not self.unchecked

    def as_dict(self) -> dict:
        out = {"created": self.created, "failed": self.failed, "problems": self.problems}
        if self.unchecked:
            out["unchecked"] = self.unchecked
        return out


class UnderReplicatedTopics(RuntimeError):
    """Existing topics below the replication settings, found at start."""


def _per_topic(settings: Settings) -> dict[str, dict]:
    """BILLING_KAFKA_TOPIC_CONFIG keyed by topic name (BILLING_TOPIC_* keys resolved)."""
    names = settings.topics.model_dump()
    out: dict[str, dict] = {}
    for key, entry in settings.kafka_topic_config.items():
        name = names.get(key, key)
        if name not in names.values():
            raise ValueError(f"BILLING_KAFKA_TOPIC_CONFIG: {key!r} is not one of the service's topics "
                             f"({', '.join(sorted(names.values()))}) nor their keys ({', '.join(names)})")
        out[name] = entry
    return out


def _positive_int(where: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be a positive integer, got {value!r}") from None
    if number < 1 or isinstance(value, bool) or str(number) != str(value).strip():
        raise ValueError(f"{where}: must be a positive integer, got {value!r}")
    return number


def topic_specs(settings: Settings) -> list[TopicSpec]:
    per_topic = _per_topic(settings)
    consumed = {getattr(settings.topics, key) for key in _CONSUMED}
    specs = []
    for name in settings.topics.all():
        entry = {**(_CONSUMED_DEFAULTS if name in consumed else {}), **per_topic.get(name, {})}
        where = f"BILLING_KAFKA_TOPIC_CONFIG[{name!r}]"
        partitions = _positive_int(f"{where}.partitions", entry.get("partitions", settings.kafka_partitions))
        rf = _positive_int(f"{where}.replication.factor",
                           entry.get("replication.factor", settings.kafka_replication_factor))
        config = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in entry.items()
                  if k not in _OWN_KEYS}
        config[MIN_ISR] = str(_positive_int(f"{where}.{MIN_ISR}",
                                            config.get(MIN_ISR, settings.kafka_min_insync_replicas)))
        if int(config[MIN_ISR]) > rf:
            raise ValueError(f"{where}: min.insync.replicas {config[MIN_ISR]} exceeds the replication factor {rf}")
        specs.append(TopicSpec(name, partitions, rf, config))
    return specs


def check_topic_config(settings: Settings) -> None:
    """Validation at Settings construction: raises ValueError naming the bad entry."""
    topic_specs(settings)


# ------------------------------------------------------------------ against the cluster


def _admin(settings: Settings, timeout_s: float):
    from confluent_kafka.admin import AdminClient

    from billing.kafka import admin_config

    return AdminClient(admin_config(settings, **{"socket.timeout.ms": int(max(timeout_s, 1) * 1000)}))


def _kafka_error(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else None
    if hasattr(err, "str") and hasattr(err, "name"):
        return f"{err.name()}: {err.str()}"
    return f"{type(exc).__name__}: {exc}"


def create_missing(settings: Settings, *, timeout_s: float = 30.0, raise_errors: bool = False,
                   admin=None) -> TopicsReport:
    """Create the topics that do not exist yet, as the settings say."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = admin or _admin(settings, timeout_s)
    report = TopicsReport()
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [s for s in topic_specs(settings) if s.name not in existing]
    if not wanted:
        return report
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
         for s in wanted],
        operation_timeout=timeout_s, request_timeout=timeout_s)
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
            report.created.append(topic)
        except KafkaException as exc:
            if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                continue
            if raise_errors:
                raise
            report.failed[topic] = _kafka_error(exc)
    _wait_visible(admin, report.created, timeout_s)
    return report


def _wait_visible(admin, names: list[str], timeout_s: float) -> None:
    """Until the created topics show in metadata with their partitions (a check or a consumer
    right after creation would otherwise find them missing)."""
    deadline = time.monotonic() + timeout_s
    while names and time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(_present(topics.get(n)) for n in names):
            return
        time.sleep(0.1)


def _present(topic) -> bool:
    return topic is not None and topic.error is None and bool(topic.partitions)


def check_existing(settings: Settings, *, timeout_s: float = 10.0, admin=None,
                   report_missing: bool = True) -> list[str]:
    """Problems of existing topics: replication factor (its smallest partition's replica
    count) or min.insync.replicas below the settings, or (report_missing) missing."""
    from confluent_kafka.admin import ConfigResource

    admin = admin or _admin(settings, timeout_s)
    metadata = admin.list_topics(timeout=timeout_s)
    specs = topic_specs(settings)
    problems: list[str] = []
    present = []
    for spec in specs:
        topic = metadata.topics.get(spec.name)
        if not _present(topic):
            if report_missing:
                problems.append(f"{spec.name}: missing")
            continue
        present.append(spec)
        rf = min((len(p.replicas) for p in topic.partitions.values()), default=0)
        if rf < spec.replication_factor:
            problems.append(f"{spec.name}: replication factor {rf} < {spec.replication_factor} wanted "
                            "(BILLING_KAFKA_REPLICATION_FACTOR)")
    if present:
        futures = admin.describe_configs([ConfigResource("topic", s.name) for s in present],
                                         request_timeout=timeout_s)
        by_name = {resource.name: future for resource, future in futures.items()}
        for spec in present:
            configs = by_name[spec.name].result(timeout=timeout_s)
            entry = configs.get(MIN_ISR)
            min_isr = int(entry.value) if entry is not None and entry.value is not None else 1
            if min_isr < spec.min_insync_replicas:
                problems.append(f"{spec.name}: min.insync.replicas {min_isr} < {spec.min_insync_replicas} wanted "
                                "(BILLING_KAFKA_MIN_INSYNC_REPLICAS)")
    return problems


def sync(settings: Settings, timeout_s: float = 30.0) -> TopicsReport:
    """`billing topics`: create what is missing, then check every topic."""
    admin = _admin(settings, timeout_s)
    try:
        report = create_missing(settings, timeout_s=timeout_s, admin=admin)
        report.problems = check_existing(settings, timeout_s=timeout_s, admin=admin,
                                         report_missing=False)
    except Exception as exc:  # noqa: BLE001 - KafkaException or a timeout: say so, exit 1
        return TopicsReport(unchecked=_kafka_error(exc))
    return report


def check_at_start(settings: Settings, timeout_s: float = 5.0) -> None:
    """The service's start-up check (roles that use Kafka): raise UnderReplicatedTopics on
    topics below the settings, unless BILLING_KAFKA_ACCEPT_UNDER_REPLICATED (then warn).
    Missing topics and an unreachable Kafka do not stop the start: readiness reports them."""
    try:
        problems = check_existing(settings, timeout_s=timeout_s, report_missing=False)
    except Exception as exc:  # noqa: BLE001 - Kafka away now: readiness says so
        log.warning("topic replication not checked at start: %s", _kafka_error(exc))
        return
    if not problems:
        return
    if settings.kafka_accept_under_replicated:
        log.warning("topics below the replication settings, accepted (BILLING_KAFKA_ACCEPT_UNDER_REPLICATED)",
                    extra={"problems": problems})
        return
    raise UnderReplicatedTopics(
        "refusing to start: " + "; ".join(problems) + ". One broker lost would lose acknowledged events. "
        "Fix the topics (docs/operations.md, `billing topics`), or set BILLING_KAFKA_ACCEPT_UNDER_REPLICATED=true "
        "to start anyway.")

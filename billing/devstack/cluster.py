"""A local Kafka cluster of several KRaft nodes, optionally SASL_SSL (SCRAM-SHA-512 over TLS).

Every node is broker and controller at once (combined mode), so three nodes make a quorum
of three voters that survives one node down. The voters are static
(`controller.quorum.voters`): a node whose data directory is lost is formatted again with
the cluster's id and rejoins as the same voter, fetching the metadata log and its replicas
from the others. (A dynamic quorum would need `kafka-metadata-quorum add-controller` for
that, from a tools jar the stack does not resolve.)

With `sasl=True` the broker listener (clients and inter-broker traffic) is SASL_SSL with
SCRAM-SHA-512; the controller listener is TLS. The CA and the server certificate are made
at start (billing.devstack.tls); the SCRAM users are written into the metadata log when
the storage is formatted (`kafka-storage format --add-scram`). Secrets live in the state
directory, so a restart keeps them.
"""
from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from billing.devstack.kafka import LocalKafka, _new_cluster_id
from billing.devstack.postgres import DevstackError
from billing.devstack.tls import TlsFiles, ensure_tls

MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "broker"  # inter-broker traffic
CLIENT_USER = "billing"  # the service and its tools


@dataclass(frozen=True)
class Security:
    tls: TlsFiles
    passwords: dict[str, str]  # SCRAM user -> password

    def client_config(self, user: str = CLIENT_USER, password: str | None = None) -> dict[str, str]:
        """librdkafka properties for a client of the cluster (what BILLING_KAFKA_CONFIG carries)."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": user,
            "sasl.password": self.passwords[user] if password is None else password,
            "ssl.ca.location": str(self.tls.ca_cert),
        }


def _load_security(directory: Path) -> Security:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scram-users.json"
    if path.exists():
        passwords = json.loads(path.read_text())
    else:
        # Hex only: the format tool's --add-scram syntax has no quoting for ',' or ']'.
        passwords = {BROKER_USER: secrets.token_hex(16), CLIENT_USER: secrets.token_hex(16)}
        path.write_text(json.dumps(passwords))
        path.chmod(0o600)
    return Security(ensure_tls(directory), passwords)


@dataclass
class KafkaNode(LocalKafka):
    """One node of the cluster: its own ports and data directory, the cluster's voters and id."""

    voters: str = ""
    cluster_id: str = ""
    security: Security | None = None
    replication_factor: int = 3
    min_insync_replicas: int = 2

    def _properties(self) -> list[str]:
        sec = self.security
        broker_proto, controller_proto = ("SASL_SSL", "SSL") if sec else ("PLAINTEXT", "PLAINTEXT")
        rf, isr = self.replication_factor, self.min_insync_replicas
        props = [
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.voters}",
            f"listeners=BROKER://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            f"advertised.listeners=BROKER://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=BROKER",
            f"listener.security.protocol.map=BROKER:{broker_proto},CONTROLLER:{controller_proto}",
            f"log.dirs={self.data_dir / 'logs'}",
            "num.partitions=6",
            "auto.create.topics.enable=false",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            "unclean.leader.election.enable=false",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=6",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "group.initial.rebalance.delay.ms=0",
            "message.max.bytes=10485760",
            # A node restarted after SIGKILL can register again only once its old session
            # has expired: shorter than the default 9 s, so a restart is back sooner.
            "broker.heartbeat.interval.ms=1000",
            "broker.session.timeout.ms=6000",
        ]
        if sec:
            password = sec.passwords[BROKER_USER]
            props += [
                f"sasl.enabled.mechanisms={MECHANISM}",
                f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
                f"listener.name.broker.{MECHANISM.lower()}.sasl.jaas.config="
                f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{BROKER_USER}" password="{password}";',
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={sec.tls.server_keystore}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={sec.tls.ca_cert}",
                "ssl.endpoint.identification.algorithm=https",
                "ssl.client.auth=none",
            ]
        return props

    def _format_args(self) -> list[str]:
        args = [f"--cluster-id={self.cluster_id}"]
        if self.security:
            for user, password in self.security.passwords.items():
                args += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        return args

    def admin_config(self) -> dict:
        """A client of this node alone (readiness of one node after a restart)."""
        conf = {"bootstrap.servers": self.bootstrap_servers}
        if self.security:
            conf.update(self.security.client_config())
        return conf


@dataclass
class KafkaCluster:
    nodes: list[KafkaNode]
    security: Security | None
    state_dir: Path
    wipes: int = 0
    kills: int = 0
    _started: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, state_dir: Path, *, brokers: int, ports: list[int], controller_ports: list[int],
               version: str, cache_dir: Path, sasl: bool, heap_max: str = "512m") -> "KafkaCluster":
        if brokers < 1 or len(ports) != brokers or len(controller_ports) != brokers:
            raise DevstackError(f"a cluster of {brokers} brokers needs {brokers} broker and controller ports")
        state_dir.mkdir(parents=True, exist_ok=True)
        id_file = state_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(_new_cluster_id())
        cluster_id = id_file.read_text().strip()
        security = _load_security(state_dir / "secrets") if sasl else None
        voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controller_ports))
        rf = min(3, brokers)
        nodes = [
            KafkaNode(data_dir=state_dir / f"node-{i + 1}", port=ports[i], controller_port=controller_ports[i],
                      version=version, cache_dir=cache_dir, node_id=i + 1, heap_min="128m", heap_max=heap_max,
                      # Three JVMs on a laptop: the quick JIT tier only, which starts (and
                      # restarts, in the fault tests) in a fraction of the CPU time.
                      jvm_flags=("-XX:TieredStopAtLevel=1",),
                      voters=voters, cluster_id=cluster_id, security=security,
                      replication_factor=rf, min_insync_replicas=min(2, rf))
            for i in range(brokers)
        ]
        return cls(nodes, security, state_dir)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap_servers for n in self.nodes)

    @property
    def replication_factor(self) -> int:
        return self.nodes[0].replication_factor

    @property
    def min_insync_replicas(self) -> int:
        return self.nodes[0].min_insync_replicas

    def client_config(self, **override: str) -> dict[str, str]:
        """Security properties for clients (bootstrap.servers not included)."""
        conf = self.security.client_config() if self.security else {}
        return {**conf, **override}

    def admin_config(self) -> dict:
        return {"bootstrap.servers": self.bootstrap_servers, **self.client_config()}

    def start(self, timeout_s: float = 120.0) -> None:
        # All at once: no node answers before a majority of the voters is up.
        for node in self.nodes:
            node.start(timeout_s, wait=False)
        for node in self.nodes:
            node.wait_ready(timeout_s)
        self.wait_brokers(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (no clean shutdown: its logs are recovered at the next start)."""
        self.node(node_id).stop(kill=True)
        self.kills += 1

    def restart(self, node_id: int, timeout_s: float = 120.0) -> None:
        self.node(node_id).start(timeout_s)
        self.wait_brokers(timeout_s)

    def wipe(self, node_id: int) -> None:
        """SIGKILL a node and lose its disk: the next start formats it again with the
        cluster's id (and the SCRAM users), and it refetches everything from the others."""
        node = self.node(node_id)
        node.stop(kill=True)
        self.kills += 1
        shutil.rmtree(node.data_dir / "logs", ignore_errors=True)
        self.wipes += 1

    def wait_brokers(self, timeout_s: float = 120.0) -> None:
        """Until every node is a registered, unfenced broker."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.admin_config(), "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if len(admin.list_topics(timeout=5).brokers) == len(self.nodes):
                    return
            except Exception:  # noqa: BLE001 - retried until the deadline
                pass
            if time.monotonic() > deadline:
                raise DevstackError(f"not all {len(self.nodes)} brokers registered within {timeout_s:.0f}s")
            time.sleep(0.5)

    def wait_in_sync(self, timeout_s: float = 180.0) -> None:
        """Until every partition of every topic has all its replicas in sync (after a
        restart or a wipe, before the next fault: otherwise the next one loses the quorum)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.admin_config(), "log_level": 0})
        deadline = time.monotonic() + timeout_s
        lagging: list[str] = []
        while True:
            try:
                md = admin.list_topics(timeout=10)
                lagging = [f"{t.topic}[{p.id}] isr={p.isrs} replicas={p.replicas}"
                           for t in md.topics.values() for p in t.partitions.values()
                           if p.leader < 0 or sorted(p.isrs) != sorted(p.replicas)]
                if not lagging:
                    return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                lagging = [repr(exc)]
            if time.monotonic() > deadline:
                raise DevstackError(f"replicas not in sync after {timeout_s:.0f}s: {lagging[:5]}")
            time.sleep(1)

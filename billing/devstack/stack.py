"""Both servers together under one state directory, on the ports asked for."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

from billing.devstack.cluster import KafkaCluster
from billing.devstack.kafka import LocalKafka
from billing.devstack.postgres import LocalPostgres


def free_port() -> int:
    """A port nobody listens on now, so tests and a running `make run` never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalStack:
    postgres: LocalPostgres
    kafka: LocalKafka | KafkaCluster

    @classmethod
    def create(cls, state_dir: Path, *, pg_port: int, kafka_port: int, controller_port: int,
               kafka_version: str, kafka_cache_dir: Path, brokers: int = 1, sasl: bool = False) -> "LocalStack":
        """One broker (the default, `make run`), or a cluster of `brokers` KRaft nodes, on
        kafka_port, kafka_port + 2, ... and controller_port, controller_port + 2, ...;
        `sasl` makes the cluster SASL_SSL (a cluster of one node then, if brokers is 1)."""
        postgres = LocalPostgres(data_dir=state_dir / "postgres", port=pg_port)
        if brokers == 1 and not sasl:
            kafka = LocalKafka(data_dir=state_dir / "kafka", port=kafka_port, controller_port=controller_port,
                               version=kafka_version, cache_dir=kafka_cache_dir)
        else:
            kafka = KafkaCluster.create(
                state_dir / f"kafka-cluster-{brokers}{'-sasl' if sasl else ''}", brokers=brokers,
                ports=[kafka_port + 2 * i for i in range(brokers)],
                controller_ports=[controller_port + 2 * i for i in range(brokers)],
                version=kafka_version, cache_dir=kafka_cache_dir, sasl=sasl)
        return cls(postgres=postgres, kafka=kafka)

    def start(self, timeout_s: float = 90.0) -> None:
        self.postgres.start(timeout_s)
        try:
            self.kafka.start(timeout_s)
        except Exception:
            self.postgres.stop(quiet=True)
            raise

    def stop(self) -> None:
        try:
            self.kafka.stop()
        finally:
            self.postgres.stop(quiet=True)

    def env(self) -> dict[str, str]:
        """The settings that point the service at this stack."""
        env = {
            "BILLING_DATABASE_URL": self.postgres.app_url,
            "BILLING_ADMIN_DATABASE_URL": self.postgres.admin_url,
            "BILLING_WORKER_DATABASE_URL": self.postgres.worker_url,
            "BILLING_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            # One broker: topics cannot be replicated; said explicitly (the defaults are 3 and 2).
            "BILLING_KAFKA_REPLICATION_FACTOR": "1",
            "BILLING_KAFKA_MIN_INSYNC_REPLICAS": "1",
        }
        if isinstance(self.kafka, KafkaCluster):
            env["BILLING_KAFKA_REPLICATION_FACTOR"] = str(self.kafka.replication_factor)
            env["BILLING_KAFKA_MIN_INSYNC_REPLICAS"] = str(self.kafka.min_insync_replicas)
            if self.kafka.security:
                env["BILLING_KAFKA_CONFIG"] = json.dumps(self.kafka.client_config(), sort_keys=True)
        return env

    def settings_kwargs(self) -> dict:
        """env() as keyword arguments of Settings."""
        return {key.removeprefix("BILLING_").lower(): value for key, value in self.env().items()}

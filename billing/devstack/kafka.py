"""Real Apache Kafka in KRaft single-node mode, from its own jars.

The jars are resolved from Maven Central with Maven once and cached outside the work
tree (`BILLING_KAFKA_CACHE_DIR`); the broker is then started with `java`:
`kafka.tools.StorageTool format`, then `kafka.Kafka`. No Docker, no mock.
"""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from billing.devstack import maven
from billing.devstack.postgres import DevstackError

_LOG4J2 = maven.log4j2_config("${sys:kafka.logs.dir}/server.log", root_level="INFO", quiet=(
    "org.apache.kafka.controller", "state.change.logger", "kafka.log", "org.apache.kafka.storage"))


def resolve_kafka_jars(version: str, cache_dir: Path) -> Path:
    """Download Kafka and a logging backend with Maven, once; return the jar directory."""
    pom = maven.pom("kafka-runtime", [maven.dependency("org.apache.kafka", "kafka_2.13", version),
                                      *maven.logging_dependencies()])
    return maven.runtime_jars(cache_dir / f"kafka-{version}", pom, stamp=version, what=f"Kafka {version}")


def port_is_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class LocalKafka:
    data_dir: Path
    port: int
    controller_port: int
    version: str
    cache_dir: Path
    host: str = "127.0.0.1"
    node_id: int = 1
    heap_min: str = "256m"
    heap_max: str = "768m"
    jvm_flags: tuple[str, ...] = ()
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _properties(self) -> list[str]:
        """server.properties of the one-node stack (a cluster node overrides this)."""
        return [
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.node_id}@{self.host}:{self.controller_port}",
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.data_dir / 'logs'}",
            "num.partitions=6",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=6",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "group.initial.rebalance.delay.ms=0",
            "message.max.bytes=10485760",
        ]

    def _format_args(self) -> list[str]:
        return [f"--cluster-id={_new_cluster_id()}"]

    def admin_config(self) -> dict:
        """What a client needs to reach this broker (a SASL_SSL node adds its security)."""
        return {"bootstrap.servers": self.bootstrap_servers}

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text("\n".join([*self._properties(), ""]))
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2)
        return props

    def _java(self, lib_dir: Path, main: str, *args: str) -> list[str]:
        return [
            maven.require("java"), f"-Xms{self.heap_min}", f"-Xmx{self.heap_max}", "-XX:+UseG1GC", *self.jvm_flags,
            f"-Dkafka.logs.dir={self.data_dir}",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            "-cp", str(lib_dir / "*"), main, *args,
        ]

    def start(self, timeout_s: float = 90.0, wait: bool = True) -> None:
        """Format the data directory if it is new, start the broker, wait until it answers
        (unless `wait` is false: a cluster node cannot answer before its quorum has formed)."""
        lib_dir = resolve_kafka_jars(self.version, self.cache_dir)
        props = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            proc = subprocess.run(
                self._java(lib_dir, "kafka.tools.StorageTool", "format", *self._format_args(), "-c", str(props)),
                capture_output=True, text=True, timeout=120,
            )
            if proc.returncode != 0:
                raise DevstackError(f"Kafka storage format failed: {(proc.stdout + proc.stderr)[-2000:]}")
        self.stop()
        out = open(self.data_dir / "stdout.log", "ab")
        self._proc = subprocess.Popen(
            self._java(lib_dir, "kafka.Kafka", str(props)),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        (self.data_dir / "kafka.pid").write_text(str(self._proc.pid))
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise DevstackError(f"Kafka exited with {self._proc.returncode}; see {self.data_dir}/server.log")
            if port_is_open(self.host, self.port):
                admin = AdminClient({**self.admin_config(), "log_level": 0})
                try:
                    md = admin.list_topics(timeout=5)
                    if self.node_id in md.brokers:  # this node, registered and unfenced
                        return
                except Exception:  # noqa: BLE001 - not ready yet, retried until the deadline
                    pass
            time.sleep(0.3)
        raise DevstackError(f"Kafka was not ready on {self.bootstrap_servers} within {timeout_s:.0f}s")

    def stop(self, kill: bool = False) -> None:
        """Stop the broker this state directory belongs to (also one left from an earlier run)."""
        pid_file = self.data_dir / "kafka.pid"
        pid = self._proc.pid if self._proc is not None else None
        if pid is None and pid_file.exists():
            try:
                pid = int(pid_file.read_text())
            except ValueError:
                pid = None
        if pid is None or not _is_kafka(pid):
            pid_file.unlink(missing_ok=True)
            return
        try:
            os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=10)
            self._proc = None
        pid_file.unlink(missing_ok=True)


def _new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _is_kafka(pid: int) -> bool:
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False

"""Kafka Connect with the Debezium JDBC sink, from Maven Central: the peer `make bench-peer`
measures this service against (what a user would otherwise deploy for Kafka -> PostgreSQL).

Like the broker (billing/devstack/kafka.py), the jars are resolved with Maven once and cached
outside the work tree (`BILLING_KAFKA_CACHE_DIR`); a standalone worker is then started with
`java` (`ConnectStandalone worker.properties connector.properties`), the connector and its
plugins on the class path.

Versions (what Maven Central serves here): connect-runtime of the devstack's Kafka;
debezium-connector-jdbc 3.6.0.Final (3.6.1.Final, the version the rest of Debezium is taken
at, has no JDBC sink on Central). Its pom asks for `org.hibernate:hibernate-agroal` 7.2.6.Final
(its default connection pool), which Central does not have under either group id: it is
excluded, and Hibernate is taken at 7.2.19.Final (same minor; core and Agroal both served).
"""
from __future__ import annotations

import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from billing.devstack import maven
from billing.devstack.process import stop_process_group
from billing.devstack.postgres import DevstackError

DEBEZIUM_JDBC_VERSION = "3.6.0.Final"
POSTGRES_JDBC_VERSION = "42.7.8"
HIBERNATE_VERSION = "7.2.19.Final"

_LOG4J2 = maven.log4j2_config("${sys:connect.logs.dir}/connect.log", root_level="WARN")


def resolve_connect_jars(kafka_version: str, cache_dir: Path) -> Path:
    """Download Connect, the Debezium JDBC sink and the PostgreSQL driver with Maven, once;
    return the jar directory."""
    pom = maven.pom("connect-debezium-jdbc", [
        maven.dependency("org.apache.kafka", "connect-runtime", kafka_version),
        maven.dependency("org.apache.kafka", "connect-json", kafka_version),
        maven.dependency("io.debezium", "debezium-connector-jdbc", DEBEZIUM_JDBC_VERSION,
                         exclusions=[("org.hibernate", "hibernate-agroal")]),
        maven.dependency("org.hibernate.orm", "hibernate-agroal", HIBERNATE_VERSION),
        maven.dependency("org.hibernate.orm", "hibernate-core", HIBERNATE_VERSION),
        maven.dependency("org.postgresql", "postgresql", POSTGRES_JDBC_VERSION),
        *maven.logging_dependencies()])
    work = cache_dir / f"connect-{kafka_version}-debezium-jdbc-{DEBEZIUM_JDBC_VERSION}-hibernate-{HIBERNATE_VERSION}"
    return maven.runtime_jars(work, pom, stamp=kafka_version, what=f"Kafka Connect {kafka_version} with the "
                                                                    f"Debezium JDBC sink {DEBEZIUM_JDBC_VERSION}")


def _properties(values: dict[str, str | int]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


@dataclass
class LocalConnect:
    """One standalone Connect worker running one connector; `worker` and `connector` are their
    properties (the worker's REST listener is added on `rest_port`)."""

    data_dir: Path
    kafka_version: str
    cache_dir: Path
    worker: dict[str, str | int]
    connector: dict[str, str | int]
    rest_port: int
    heap_max: str = "1g"
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the worker and wait until its connector's tasks are RUNNING."""
        lib_dir = resolve_connect_jars(self.kafka_version, self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        worker = {**self.worker, "listeners": f"http://127.0.0.1:{self.rest_port}",
                  "offset.storage.file.filename": str(self.data_dir / "connect.offsets")}
        (self.data_dir / "worker.properties").write_text(_properties(worker))
        (self.data_dir / "connector.properties").write_text(_properties(self.connector))
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2)
        out = open(self.data_dir / "stdout.log", "ab")
        self._proc = subprocess.Popen(
            [maven.require("java"), "-Xms256m", f"-Xmx{self.heap_max}", "-XX:+UseG1GC",
             f"-Dconnect.logs.dir={self.data_dir}", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
             "-cp", str(lib_dir / "*"), "org.apache.kafka.connect.cli.ConnectStandalone",
             str(self.data_dir / "worker.properties"), str(self.data_dir / "connector.properties")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_running(timeout_s)

    def status(self) -> str:
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{self.connector['name']}/status"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()

    def wait_running(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        tasks = int(self.connector.get("tasks.max", 1))
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise DevstackError(f"Kafka Connect exited with {self._proc.returncode}; see {self.data_dir}")
            try:
                body = self.status()
                if "FAILED" in body:
                    raise DevstackError(f"the connector failed: {body[:2000]}; see {self.data_dir}")
                if body.count('"RUNNING"') >= tasks + 1:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise DevstackError(f"Kafka Connect was not running within {timeout_s:.0f}s; see {self.data_dir}")

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process_group(self._proc, grace_s=30)
        self._proc = None

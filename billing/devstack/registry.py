"""A real schema registry that speaks the Confluent API: Apicurio Registry, from Maven Central.

Apicurio publishes its application as a library jar (no runnable jar) on Maven Central, so
the registry is assembled once with Maven, like the Kafka jars (billing/devstack/kafka.py),
and cached outside the work tree: a small Quarkus project that depends on
`io.apicurio:apicurio-registry-app` is built with the Quarkus Maven plugin into a runnable
jar, then started with `java`. In-memory storage (H2 inside the process): schemas live as
long as the process. The Confluent-compatible API is under `/apis/ccompat/v6`.

Why 2.4.2.Final, and the two adjustments (all Maven Central could serve):
- 2.6.x and 3.x need artifacts Central does not have (apicurio-registry-schema-util-provider
  2.6.13.Final and 3.3.3, parent io.apicurio:apicurio-registry 3.0.9);
- `org.everit.json.schema` (JSON Schema support, from JitPack) is excluded: Avro only here;
- the config-index Quarkus extension's deployment jar is not on Central: the runtime
  extension is excluded and its one bean (`DynamicConfigPropertyList`, the run-time
  changeable properties) is produced empty by a class of our own.
"""
from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from billing.devstack import maven
from billing.devstack.process import stop_process_group
from billing.devstack.postgres import DevstackError

APICURIO_VERSION = "2.4.2.Final"
QUARKUS_VERSION = "2.16.4.Final"  # the one apicurio-registry 2.4.2.Final is built with
CCOMPAT_PATH = "/apis/ccompat/v6"

_POM = maven.pom(
    "schema-registry",
    [maven.dependency("io.apicurio", "apicurio-registry-app", APICURIO_VERSION, exclusions=[
        ("com.github.everit-org.json-schema", "*"),
        ("io.apicurio", "apicurio-common-app-components-config-index")])],
    head=("  <properties>\n"
          "    <maven.compiler.source>17</maven.compiler.source><maven.compiler.target>17</maven.compiler.target>\n"
          "    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>\n"
          "  </properties>\n"
          "  <dependencyManagement><dependencies>\n"
          f"    {maven.dependency('io.apicurio', 'apicurio-registry', APICURIO_VERSION, type_='pom', scope='import')}\n"
          "  </dependencies></dependencyManagement>\n"),
    build=("  <build><plugins>\n"
           "    <plugin><groupId>io.quarkus</groupId><artifactId>quarkus-maven-plugin</artifactId>"
           f"<version>{QUARKUS_VERSION}</version>\n"
           "      <executions><execution><goals><goal>build</goal></goals></execution></executions></plugin>\n"
           "  </plugins></build>\n"))

_CONFIG_LIST = """package billing.devstack;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

// Stands in for the config-index extension (its deployment jar is not on Maven Central):
// no property of this registry changes at run time.
@ApplicationScoped
public class DynamicConfigList {
    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList list() {
        return new DynamicConfigPropertyList(List.of());
    }
}
"""

# Libraries of the registry without a Jandex index: Quarkus must index them to find their beans.
_INDEXED = ("apicurio-registry-app", "apicurio-registry-schema-util-provider", "apicurio-registry-schema-util-common",
            "apicurio-registry-schema-util-avro", "apicurio-registry-utils-kafka",
            "apicurio-registry-utils-import-export", "apicurio-common-app-components-config", "apicurio-registry-ui",
            "apicurio-tenant-manager-client")


def _mvn(mvn: str, work: Path, *args: str) -> None:
    maven.run(mvn, work, *args, timeout_s=1800,
              failure=f"Maven could not build Apicurio Registry {APICURIO_VERSION} ({' '.join(args)})")


def resolve_registry_jar(cache_dir: Path) -> Path:
    """Build the registry's runnable jar with Maven, once; return its path."""
    work = cache_dir / f"apicurio-registry-{APICURIO_VERSION}"
    jar = work / "target" / "schema-registry-1-runner.jar"
    done = work / ".complete"
    if done.exists() and jar.exists():
        return jar
    mvn = maven.require("mvn")
    maven.require("java")
    if work.exists():
        shutil.rmtree(work)
    java_dir = work / "src" / "main" / "java" / "billing" / "devstack"
    resources = work / "src" / "main" / "resources"
    java_dir.mkdir(parents=True)
    resources.mkdir(parents=True)
    (work / "pom.xml").write_text(_POM)
    (java_dir / "DynamicConfigList.java").write_text(_CONFIG_LIST)
    # The application's own build-time configuration lives in its jar: take it over.
    _mvn(mvn, work, "dependency:copy", f"-Dartifact=io.apicurio:apicurio-registry-app:{APICURIO_VERSION}",
         f"-DoutputDirectory={work / 'app'}")
    with zipfile.ZipFile(work / "app" / f"apicurio-registry-app-{APICURIO_VERSION}.jar") as z:
        props = z.read("application.properties").decode("utf-8")
    props += "".join(f"\nquarkus.index-dependency.{a.replace('-', '')}.group-id=io.apicurio"
                     f"\nquarkus.index-dependency.{a.replace('-', '')}.artifact-id={a}" for a in _INDEXED)
    (resources / "application.properties").write_text(props + "\n")
    _mvn(mvn, work, "package", "-DskipTests")
    if not jar.exists():
        raise DevstackError(f"the Apicurio Registry build made no {jar}")
    done.write_text(APICURIO_VERSION)
    return jar


@dataclass
class LocalSchemaRegistry:
    """Apicurio Registry on 127.0.0.1:`port`; `url` is its Confluent-compatible API."""

    data_dir: Path
    port: int
    cache_dir: Path
    host: str = "127.0.0.1"
    heap_max: str = "384m"
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{CCOMPAT_PATH}"

    def start(self, timeout_s: float = 120.0) -> None:
        jar = resolve_registry_jar(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.data_dir / "registry.log", "ab")
        self._proc = subprocess.Popen(
            [maven.require("java"), f"-Xmx{self.heap_max}", "-XX:+UseSerialGC", f"-Dquarkus.http.port={self.port}",
             f"-Dquarkus.http.host={self.host}", "-Dquarkus.log.level=WARN", "-jar", str(jar)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.data_dir)
        (self.data_dir / "registry.pid").write_text(str(self._proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DevstackError(f"the schema registry exited with {self._proc.returncode}; "
                                    f"see {self.data_dir / 'registry.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise DevstackError(f"the schema registry was not ready on {self.url} within {timeout_s:.0f}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process_group(self._proc, grace_s=20)
        self._proc = None
        (self.data_dir / "registry.pid").unlink(missing_ok=True)

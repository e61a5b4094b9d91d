"""What the devstack asks of Maven, in one place: the pom.xml files it writes (the broker's,
Kafka Connect's, the schema registry's), the log4j2 configuration of the JVMs it starts, and
the one-time copy of a pom's runtime jars into a directory cached outside the work tree.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from billing.devstack.postgres import DevstackError

# Kafka 4.x logs through SLF4J 2; log4j2 is the backend Kafka itself ships with.
LOG4J_VERSION = "2.25.3"
SLF4J_VERSION = "2.0.17"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise DevstackError(
            f"{tool} is not installed, so the local Kafka cannot start; "
            "set BILLING_KAFKA_BOOTSTRAP_SERVERS to an existing Kafka instead"
        )
    return path


def dependency(group: str, artifact: str, version: str, *, scope: str = "", type_: str = "",
               exclusions: Sequence[tuple[str, str]] = ()) -> str:
    """One <dependency>; `exclusions` are (group, artifact) pairs ("*": every artifact)."""
    tags = f"<groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>"
    tags += f"<type>{type_}</type>" if type_ else ""
    tags += f"<scope>{scope}</scope>" if scope else ""
    if not exclusions:
        return f"<dependency>{tags}</dependency>"
    excluded = "".join(f"\n        <exclusion><groupId>{g}</groupId><artifactId>{a}</artifactId></exclusion>"
                       for g, a in exclusions)
    return f"<dependency>{tags}\n      <exclusions>{excluded}\n      </exclusions>\n    </dependency>"


def logging_dependencies() -> list[str]:
    """SLF4J 2 and its log4j2 backend, what every JVM of the devstack logs through."""
    return [dependency("org.slf4j", "slf4j-api", SLF4J_VERSION),
            dependency("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
            dependency("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION)]


def pom(artifact_id: str, dependencies: Sequence[str], *, head: str = "", build: str = "") -> str:
    """A pom.xml of group billing.devstack, version 1. `head` (properties, dependency
    management) stands before the dependencies, `build` after them."""
    listed = "".join(f"    {d}\n" for d in dependencies)
    return ('<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            "  <modelVersion>4.0.0</modelVersion>\n"
            f"  <groupId>billing.devstack</groupId><artifactId>{artifact_id}</artifactId><version>1</version>\n"
            f"{head}"
            f"  <dependencies>\n{listed}  </dependencies>\n"
            f"{build}"
            "</project>\n")


def log4j2_config(log_file: str, *, root_level: str, quiet: Sequence[str] = ()) -> str:
    """A log4j2.xml writing everything at `root_level` and above to `log_file` (a path that
    may name a system property, ``${sys:kafka.logs.dir}/server.log``); the `quiet` loggers at
    WARN."""
    loggers = "".join(f'    <Logger name="{name}" level="WARN"/>\n' for name in quiet)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Configuration status="WARN">\n'
            "  <Appenders>\n"
            f'    <File name="file" fileName="{log_file}">\n'
            '      <PatternLayout pattern="[%d] %p %m (%c)%n"/>\n'
            "    </File>\n"
            "  </Appenders>\n"
            "  <Loggers>\n"
            f'    <Root level="{root_level}"><AppenderRef ref="file"/></Root>\n'
            f"{loggers}"
            "  </Loggers>\n"
            "</Configuration>\n")


def run(mvn: str, work: Path, *args: str, timeout_s: float, failure: str) -> None:
    """Maven on `work`/pom.xml; a failure raises `failure` with the end of Maven's output."""
    proc = subprocess.run([mvn, "-q", "-B", "-f", str(work / "pom.xml"), *args],
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise DevstackError(f"{failure}: {(proc.stdout + proc.stderr)[-2000:]}")


def runtime_jars(work: Path, pom_xml: str, *, stamp: str, what: str) -> Path:
    """The runtime jars of `pom_xml` copied into `work`/libs by Maven, once (a `.complete`
    file holding `stamp` marks a finished copy); `what` names them in an error."""
    lib_dir = work / "libs"
    done = lib_dir / ".complete"
    if done.exists():
        return lib_dir
    mvn = require("mvn")
    require("java")
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(pom_xml)
    if lib_dir.exists():
        shutil.rmtree(lib_dir)
    run(mvn, work, "dependency:copy-dependencies", f"-DoutputDirectory={lib_dir}", "-DincludeScope=runtime",
        timeout_s=900, failure=f"Maven could not resolve {what}")
    # Kafka pulls slf4j-api 1.7 transitively; keep only the 2.x asked for.
    for jar in lib_dir.glob("slf4j-api-1.*.jar"):
        jar.unlink()
    done.write_text(stamp)
    return lib_dir

"""The pom.xml and log4j2.xml files the devstack writes (billing/devstack/maven.py) are
well-formed and say what the broker, Kafka Connect and the schema registry need."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from billing.devstack import kafka, maven, registry

NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _deps(pom: str, path: str = "m:dependencies/m:dependency") -> list[tuple[str, str, str]]:
    root = ET.fromstring(pom)
    return [(d.findtext("m:groupId", namespaces=NS), d.findtext("m:artifactId", namespaces=NS),
             d.findtext("m:version", namespaces=NS)) for d in root.findall(path, NS)]


def test_a_pom_lists_its_dependencies_with_their_exclusions():
    pom = maven.pom("x", [maven.dependency("g", "a", "1", exclusions=[("h", "*"), ("i", "b")]),
                          *maven.logging_dependencies()])
    root = ET.fromstring(pom)
    assert root.findtext("m:artifactId", namespaces=NS) == "x"
    assert _deps(pom) == [("g", "a", "1"), ("org.slf4j", "slf4j-api", maven.SLF4J_VERSION),
                          ("org.apache.logging.log4j", "log4j-slf4j2-impl", maven.LOG4J_VERSION),
                          ("org.apache.logging.log4j", "log4j-core", maven.LOG4J_VERSION)]
    excluded = [(e.findtext("m:groupId", namespaces=NS), e.findtext("m:artifactId", namespaces=NS))
                for e in root.findall("m:dependencies/m:dependency/m:exclusions/m:exclusion", NS)]
    assert excluded == [("h", "*"), ("i", "b")]


def test_the_registry_pom_imports_apicurio_and_builds_with_quarkus():
    root = ET.fromstring(registry._POM)
    assert _deps(registry._POM, "m:dependencyManagement/m:dependencies/m:dependency") == [
        ("io.apicurio", "apicurio-registry", registry.APICURIO_VERSION)]
    assert _deps(registry._POM) == [("io.apicurio", "apicurio-registry-app", registry.APICURIO_VERSION)]
    plugin = root.find("m:build/m:plugins/m:plugin", NS)
    assert plugin is not None and plugin.findtext("m:version", namespaces=NS) == registry.QUARKUS_VERSION
    assert root.findtext("m:properties/m:maven.compiler.source", namespaces=NS) == "17"


def test_log4j2_writes_to_the_named_file_and_quiets_the_named_loggers():
    root = ET.fromstring(kafka._LOG4J2)
    assert root.find("Appenders/File").get("fileName") == "${sys:kafka.logs.dir}/server.log"
    assert root.find("Loggers/Root").get("level") == "INFO"
    assert {lg.get("name"): lg.get("level") for lg in root.findall("Loggers/Logger")} == {
        "org.apache.kafka.controller": "WARN", "state.change.logger": "WARN", "kafka.log": "WARN",
        "org.apache.kafka.storage": "WARN"}
    quiet = ET.fromstring(maven.log4j2_config("/x/y.log", root_level="WARN"))
    assert quiet.find("Loggers/Root").get("level") == "WARN" and quiet.findall("Loggers/Logger") == []

"""The local stack: real PostgreSQL and real Kafka on this machine, no Docker needed."""
from billing.devstack.cluster import KafkaCluster
from billing.devstack.kafka import LocalKafka, resolve_kafka_jars
from billing.devstack.postgres import DevstackError, LocalPostgres
from billing.devstack.registry import LocalSchemaRegistry
from billing.devstack.stack import LocalStack, free_port

__all__ = ["DevstackError", "KafkaCluster", "LocalKafka", "LocalPostgres", "LocalSchemaRegistry", "LocalStack", "free_port",
           "resolve_kafka_jars"]

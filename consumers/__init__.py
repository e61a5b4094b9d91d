"""Kafka -> services: the consumer runner and the usage, command and billing consumers."""

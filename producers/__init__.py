"""Services -> Kafka: the outbox relay and the usage producer client."""

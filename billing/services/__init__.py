"""Use cases: one function per use case, called by gRPC and by the Kafka consumers alike."""

"""The gRPC facade: translates billing.v1 messages to service calls and errors to statuses."""

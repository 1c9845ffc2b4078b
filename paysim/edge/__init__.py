"""The HTTP API at the edge: request validation, idempotency, Kafka delivery, the app and
its server."""

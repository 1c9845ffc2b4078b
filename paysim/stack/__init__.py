"""The local stack: a real Kafka broker and redis-server run as plain processes on 127.0.0.1."""

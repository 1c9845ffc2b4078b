"""What every layer above the domain stands on: settings, errors, secrets, Kafka clients and
topics, waiting on a condition."""

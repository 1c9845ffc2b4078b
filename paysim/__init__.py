"""paysim: a command-line card-payment simulator and load tool on Apache Kafka and Redis."""

__version__ = "0.1.0"

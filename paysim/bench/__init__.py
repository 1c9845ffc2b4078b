"""The benchmark behind bench/run: Kafka's own perf tools as the reference, then paysim."""

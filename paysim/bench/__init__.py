"""The benchmark behind bench/run: Kafka's own perf tools as the reference, then paysim."""

# Processor instances the benchmark starts unless told (--processors). Two: on two cores the
# kernel gives each busy process about the same share, and the processor, the service that
# needs the most CPU a payment, fell a minute behind at 5,000/s on one share (end to end p99
# 49-57 s in three full runs on 2026-11-26) and kept up on two (p99 405 ms); see
# docs/performance.md, "Session 8's full runs".
DEFAULT_PROCESSORS = 2

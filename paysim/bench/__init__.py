"""The benchmark behind bench/run: Kafka's own perf tools as the reference, then paysim."""

# Processor instances the benchmark starts unless told (--processors), and so its topics'
# partitions. One: each instance is a transactional producer committing its own transactions,
# and below saturation a transaction costs the machine more than its payments do. In seven
# full runs of the same hour (2026-11-27), one processor against two: the 2,000/s p99
# 40.7-44.7 ms against 44.0-50.4, HTTP 4,813-5,313 requests/s against 3,298-4,447, the ratio
# to Kafka's producer tool and the CPU a payment at saturation the same within the noise; the
# 5,000/s p99 93-176 against 89-113 (docs/performance.md, "One processor"). Two were the
# default from session 8, when the processor cost half as much again a payment and one fell
# a minute behind at 5,000/s ("Session 8's full runs").
DEFAULT_PROCESSORS = 1

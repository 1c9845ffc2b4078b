"""Python's cyclic garbage collector set for a process that handles payments in batches.

With the interpreter's defaults (a young collection every 700 net allocations of container
objects), a batch's payments (hundreds at saturation, each a few dozen objects alive until the
batch ends) outlive several young collections, reach the oldest generation, and bring on full
collections that walk every object of the process: 13-39% of the processor's samples holding
the GIL at saturation (py-spy --native: gc_collect_main), more the longer it had run
(docs/performance.md, "CPU per payment").

Nearly nothing a payment allocates is cyclic: reference counting frees it when its batch is
done. So the young generation is made large enough to hold a batch, and what the process
built at start-up (modules, settings, clients) is frozen out of every collection. Cycles are
still collected, only less often.
"""

from __future__ import annotations

import gc

# Net allocations of container objects between young collections: above what a batch of 500
# payments keeps alive at once, so a batch's objects die before a collection sees them.
YOUNG_THRESHOLD = 100_000
# Young collections per middle one, and middle per full (the interpreter's are 10 and 10).
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 20


def tune_for_batches() -> None:
    """Set the collector for a long-running payment process; call once start-up is done (what
    exists then is frozen: never scanned again, never freed)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)

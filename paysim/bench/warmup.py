"""The benchmark's warm-up: what runs, unmeasured, before the measured phases, and when the
broker's JIT has compiled enough of its request paths for them to be measured.

The broker is a JVM: the first minute or so of load costs it CPU in its JIT compiler threads,
on top of serving the requests. Left in a measured phase, that compiling counts as the
broker's CPU per payment and takes CPU from the pipeline on a 2-core machine
(docs/performance.md, "The broker's JIT in the saturation run").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from paysim.bench.resources import stat_cpu

# Enough for each service to reach the memory it holds under load (its batches, librdkafka's
# buffers: 5-10 MB above idle, reached some seconds into a backlog), so that the saturation
# run's RSS growth measures the run, not the ramp from idle. Memory at the services' start is
# reported too. Not enough for the broker's JIT: see WARM_UP_RATE.
WARM_UP_PAYMENTS = 100_000
# Then payments at WARM_UP_RATE. At saturation the stages commit few large transactions, so
# the broker's request paths run too seldom to get compiled: after WARM_UP_PAYMENTS alone,
# the broker's JIT compiler threads still took 43% of its CPU over the next 60,000 payments
# at saturation (its CPU a payment 30-54 µs, against 11-18 once compiled). At 2,000/s (some
# 450 small transactions a second) they compile within a minute.
WARM_UP_RATE = 2000.0
# The open model runs in slices this long, and goes on past its least length until the
# compiler threads took less than JIT_SETTLED_SHARE of one core over the last slice, or its
# greatest length ran. In 10 s slices at 2,000/s after the payments at saturation, they took
# 3.95, 3.13, 1.48, 0.41, 0.39, 0.18 s of CPU (2026-11-27): after the 20 s the warm-up ran
# until then, they still took 8 µs of the broker's 31 a payment in the saturation run that
# followed, 1 µs after 60 s.
SLICE_S = 5.0
JIT_SETTLED_SHARE = 0.05

# HotSpot's JIT compiler threads, as /proc gives their names (cut to 15 characters).
COMPILER_THREADS = ("C1 CompilerThre", "C2 CompilerThre")


@dataclass(frozen=True)
class WarmUpPlan:
    payments: int  # as fast as they go
    rate: float  # then payments at this rate a second
    least_s: float  # for at least this long
    most_s: float  # and at most this long, until the broker's JIT settled


@dataclass(frozen=True)
class WarmUp:
    """What ran before the measured phases, unmeasured: runs with other warm-ups are not
    comparable at saturation."""

    payments: int
    open_model_rate: float
    open_model_s: float  # how long the open model ran
    compiler_s: float | None = None  # the broker's JIT compiler threads' CPU meanwhile
    jit_settled: bool | None = None  # they went quiet before the greatest length ran

    def as_dict(self) -> dict[str, float | bool | None]:
        return {"payments": self.payments, "open_model_rate": self.open_model_rate,
                "open_model_s": self.open_model_s, "compiler_s": self.compiler_s,
                "jit_settled": self.jit_settled}


# Each compiler thread's CPU seconds so far, by thread id.
CompilerThreads = dict[str, float]


def compiler_threads(pid: int) -> CompilerThreads | None:
    """CPU time so far of each of a HotSpot JVM's JIT compiler threads; None when the
    process is gone."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    found = {}
    for thread in threads:
        read = stat_cpu(f"/proc/{pid}/task/{thread}/stat")  # None: it ended meanwhile
        if read is not None and read[0] in COMPILER_THREADS:
            found[thread] = read[1]
    return found


def compiled_since(before: CompilerThreads, after: CompilerThreads) -> float:
    """The compiler threads' CPU between two readings. HotSpot starts and ends compiler
    threads as their queue grows and shrinks (on machines of more than two cores): a thread
    started since counts whole, one ended since counts until the earlier reading, so that the
    figure never goes down."""
    return sum(cpu - before.get(thread, 0.0) for thread, cpu in after.items())


def jit_settled(compiler_s: float, slice_s: float) -> bool:
    """Whether compiling took less than JIT_SETTLED_SHARE of one core over a slice."""
    return compiler_s < JIT_SETTLED_SHARE * slice_s


def warm_open_model(plan: WarmUpPlan, run_slice: Callable[[float, int], None],
                    read_compilers: Callable[[], CompilerThreads | None]) -> WarmUp:
    """Run the open model part of ``plan`` in slices (``run_slice(seconds, index)``) until
    the broker's JIT settled or the greatest length ran; ``read_compilers`` reads its
    compiler threads (None: not readable, and the least length is run). A slice is a run of
    its own, which ends once its payments are answered: the lengths are the runs' nominal
    ones, and the least length is run in whole slices."""
    slice_s = min(SLICE_S, plan.least_s) if plan.least_s > 0 else SLICE_S
    ran, settled, spent = 0.0, False, 0.0
    last = read_compilers()
    index = 0
    while ran < plan.most_s:
        length = min(slice_s, plan.most_s - ran)
        run_slice(length, index)
        ran, index = ran + length, index + 1
        now = read_compilers()
        if now is None or last is None:
            last = None  # what the compilers took is unknown from here on
            if ran >= plan.least_s:
                break
            continue
        in_slice = compiled_since(last, now)
        spent, settled, last = spent + in_slice, jit_settled(in_slice, length), now
        if settled and ran >= plan.least_s:
            break
    known = last is not None
    return WarmUp(plan.payments, plan.rate, ran, round(spent, 2) if known else None,
                  settled if known else None)

"""The benchmark's warm-up goes on until the broker's JIT settles, within its bounds; the JIT
compiler threads' CPU is read from /proc (a real JVM's is read in the bench's integration
test)."""

from __future__ import annotations

import os

import pytest

from paysim.bench.warmup import (
    JIT_SETTLED_SHARE,
    SLICE_S,
    WarmUpPlan,
    compiled_since,
    compiler_threads,
    jit_settled,
    warm_open_model,
)

PLAN = WarmUpPlan(payments=100_000, rate=2000.0, least_s=20.0, most_s=60.0)


def run(plan: WarmUpPlan, compiling_per_slice: list[float | None]):
    """The warm-up with the compiler threads taking these seconds of CPU in each slice (None:
    unreadable from then on); the slices it ran."""
    slices: list[tuple[float, int]] = []
    readings = iter(compiling_per_slice)
    total = [0.0]

    def read_compilers() -> dict[str, float] | None:
        if not slices:
            return {"101": total[0]}
        spent = next(readings)
        if spent is None:
            return None
        total[0] += spent
        return {"101": total[0]}

    warm = warm_open_model(plan, lambda length, index: slices.append((length, index)),
                           read_compilers)
    return warm, slices


def test_the_open_model_goes_on_until_the_jit_is_quiet() -> None:
    busy, quiet = 2.0, 0.1
    assert quiet < JIT_SETTLED_SHARE * SLICE_S
    warm, slices = run(PLAN, [busy, busy, busy, busy, busy, busy, quiet, busy])
    assert slices == [(SLICE_S, index) for index in range(7)]
    assert warm.open_model_s == 7 * SLICE_S and warm.jit_settled is True
    assert warm.compiler_s == pytest.approx(6 * busy + quiet)
    assert warm.payments == 100_000 and warm.open_model_rate == 2000.0


def test_a_quiet_jit_still_runs_the_least_length() -> None:
    warm, slices = run(PLAN, [0.0] * 12)
    assert [length for length, _ in slices] == [SLICE_S] * 4
    assert warm.open_model_s == PLAN.least_s and warm.jit_settled is True


def test_a_jit_that_keeps_compiling_stops_at_the_greatest_length() -> None:
    plan = WarmUpPlan(1000, 2000.0, least_s=20.0, most_s=32.0)
    warm, slices = run(plan, [3.0] * 12)
    assert [length for length, _ in slices] == [5.0] * 6 + [2.0]  # the last slice cut short
    assert warm.open_model_s == 32.0 and warm.jit_settled is False


def test_short_warm_ups_run_in_slices_no_longer_than_the_least_length() -> None:
    warm, slices = run(WarmUpPlan(3000, 2000.0, least_s=1.0, most_s=1.0), [4.0])
    assert slices == [(1.0, 0)] and warm.open_model_s == 1.0 and warm.jit_settled is False


def test_unreadable_compiler_threads_run_the_least_length_and_say_so() -> None:
    warm, slices = run(PLAN, [1.0, None, None, None, None])
    assert len(slices) == 4 and warm.open_model_s == PLAN.least_s
    assert warm.compiler_s is None and warm.jit_settled is None


def test_settled_means_under_a_twentieth_of_a_core() -> None:
    assert jit_settled(0.24, 5.0) and not jit_settled(0.25, 5.0)


def test_a_warm_up_of_no_least_length_still_ends() -> None:
    warm, slices = run(WarmUpPlan(1000, 2000.0, least_s=0.0, most_s=12.0), [9.0] * 3)
    assert [length for length, _ in slices] == [SLICE_S, SLICE_S, 2.0]
    assert warm.open_model_s == 12.0 and warm.jit_settled is False


def test_compiler_threads_that_come_and_go_never_make_the_figure_go_down() -> None:
    """HotSpot ends an idle extra compiler thread and starts one when its queue grows."""
    before = {"101": 4.0, "102": 3.0}
    after = {"101": 4.5, "103": 0.25}  # 102 ended, 103 started
    assert compiled_since(before, after) == 0.75
    assert compiled_since({}, after) == 4.75


def test_a_process_without_a_jit_has_no_compiler_threads() -> None:
    assert compiler_threads(os.getpid()) == {}


def test_a_gone_process_has_no_compiler_threads_to_read() -> None:
    assert compiler_threads(2**22 + 1) is None  # above the kernel's largest pid

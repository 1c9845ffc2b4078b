"""The garbage collector's settings for payment processes (paysim/infra/collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from paysim.infra import collector


@pytest.fixture
def tuned() -> Iterator[None]:
    """tune_for_batches() for one test, the interpreter's settings back after it."""
    before = gc.get_threshold()
    collector.tune_for_batches()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("tuned")
def test_start_up_is_frozen_and_the_young_generation_holds_a_batch() -> None:
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, collector.MIDDLE_THRESHOLD,
                                  collector.OLD_THRESHOLD)
    assert gc.get_freeze_count() > 0
    # A batch of 500 payments, a few dozen objects each, starts no collection.
    before = gc.get_count()[0]
    batch = [{"payment": index, "stages": [index, index + 1]} for index in range(500 * 20)]
    assert gc.get_count()[0] - before >= len(batch)  # counted, not collected yet
    del batch


@pytest.mark.usefixtures("tuned")
def test_cycles_are_still_collected_without_being_asked() -> None:
    class Node:
        other: object

    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    # Past the young threshold the collector runs by itself (no gc.collect() here): the
    # cycle, unreachable, goes with its first collection.
    kept = [[] for _ in range(collector.YOUNG_THRESHOLD + 1_000)]
    assert gone() is None
    del kept

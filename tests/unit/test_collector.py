"""The garbage collector's settings for payment processes (paysim/infra/collector.py)."""

from __future__ import annotations

import gc
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
def test_cycles_are_still_collected() -> None:
    class Node:
        other: object

    first, second = Node(), Node()
    first.other, second.other = second, first
    del first, second
    assert gc.collect() >= 2

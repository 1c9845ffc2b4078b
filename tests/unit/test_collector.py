"""The garbage collector's settings for payment processes (paysim/infra/collector.py)."""

from __future__ import annotations

import gc

from paysim.infra import collector


def test_tune_for_batches_freezes_start_up_and_widens_the_young_generation() -> None:
    before = gc.get_threshold()
    try:
        collector.tune_for_batches()
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, collector.MIDDLE_THRESHOLD,
                                      collector.OLD_THRESHOLD)
        assert gc.get_freeze_count() > 0
        # A batch's worth of short-lived objects no longer starts a collection.
        assert collector.YOUNG_THRESHOLD > 500 * 50
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_cycles_are_still_collected_after_tuning() -> None:
    before = gc.get_threshold()
    try:
        collector.tune_for_batches()

        class Node:
            other: object

        first, second = Node(), Node()
        first.other, second.other = second, first
        del first, second
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

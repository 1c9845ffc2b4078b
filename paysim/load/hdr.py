"""HdrHistogram's figures at C speed, the same values to the last bit as hdrh's own methods.

hdrh computes a histogram's mean and percentiles by walking its counts array in Python (23,552
buckets for paysim's 1 µs to 1 h at 3 digits): 0.1 s or more per figure once the latencies
reach tens of milliseconds. Done once at a run's end that was tolerable; a live verdict each
second, or a Prometheus scrape, would take that from the sender. Here the array is copied to
an ``array`` (Python reads it many times faster than ctypes), the running counts are made by
``itertools.accumulate``, the buckets recorded into are picked by ``itertools.compress``, and
each bucket's values (lowest, middle, median) are worked out once per process (``Layout``).
"""

from __future__ import annotations

import array
import bisect
import functools
import itertools
import operator
import threading
from collections.abc import Sequence

from hdrh.histogram import HdrHistogram


def counts_copy(histogram: HdrHistogram) -> array.array[int]:
    """A copy of an HdrHistogram's counts array, taken at C speed (under the lock of whoever
    records into it)."""
    view = memoryview(histogram.counts)
    copy = array.array(view.format.lstrip("<>=!@"))  # ctypes says "<Q"; array wants "Q"
    copy.frombytes(view.cast("B"))
    return copy


class Layout:
    """What an HdrHistogram's shape says about its counts array, worked out once."""

    def __init__(self, histogram: HdrHistogram) -> None:
        self.histogram = histogram
        size = histogram.counts_len
        # Buckets are contiguous: bucket i holds [lowest[i], lowest[i + 1] - 1].
        self.lowest = [histogram.get_value_from_index(i) for i in range(size + 1)]
        self.middles = [(self.lowest[i] + self.lowest[i + 1] - 1) / 2 for i in range(size)]
        # hdrh's "median equivalent value", what its mean takes each bucket at.
        self.medians = [self.lowest[i] + ((self.lowest[i + 1] - self.lowest[i]) >> 1)
                        for i in range(size)]
        self._ends: dict[tuple[float, ...], list[int]] = {}

    def ends(self, bounds: Sequence[float], scale: float) -> list[int]:
        """The end (exclusive) in the counts array of the buckets at or under each bound
        (bound * scale, in the histogram's unit): a bucket is under when its lowest value is."""
        key = (*bounds, scale)
        ends = self._ends.get(key)
        if ends is None:
            ends = self._ends[key] = [
                min(self.histogram.get_counts_array_index(int(bound * scale)) + 1,
                    self.histogram.counts_len)
                for bound in bounds]
        return ends


_layouts: dict[tuple[int, int, int], Layout] = {}
_layouts_lock = threading.Lock()


def layout(histogram: HdrHistogram) -> Layout:
    """The layout shared by every histogram of this shape (paysim's are all one shape)."""
    key = (histogram.lowest_trackable_value, histogram.highest_trackable_value,
           histogram.significant_figures)
    with _layouts_lock:
        found = _layouts.get(key)
        if found is None:
            found = _layouts[key] = Layout(histogram)
        return found


def mean(histogram: HdrHistogram, counts: Sequence[int] | None = None) -> float:
    """``histogram.get_mean_value()``: each bucket at its median equivalent value."""
    counts = counts_copy(histogram) if counts is None else counts
    total_count = sum(counts)
    if not total_count:
        return 0.0
    medians = itertools.compress(layout(histogram).medians, counts)
    total = sum(map(operator.mul, itertools.compress(counts, counts), medians))  # ints: exact
    return float(total) / total_count


def values_at_percentiles(histogram: HdrHistogram, percentiles: Sequence[float],
                          counts: Sequence[int] | None = None) -> list[int]:
    """``histogram.get_value_at_percentile(p)`` for each p, from one pass."""
    counts = counts_copy(histogram) if counts is None else counts
    running = list(itertools.accumulate(counts))
    total_count = running[-1] if running else 0
    shape = layout(histogram)
    out = []
    for percentile in percentiles:
        target = max(int(min(percentile, 100.0) * total_count / 100 + 0.5), 1)
        index = bisect.bisect_left(running, target)
        if index >= len(running):
            out.append(0)
        elif percentile:  # the bucket's highest value; its lowest for the 0th
            out.append(shape.lowest[index + 1] - 1)
        else:
            out.append(shape.lowest[index])
    return out


def buckets(histogram: HdrHistogram, counts: Sequence[int], bounds: Sequence[float],
            scale: float) -> tuple[list[int], float]:
    """The cumulative count at each bound (times ``scale``, in the histogram's unit) and
    +Inf, and the sum of the values (each at its bucket's middle), in the histogram's unit."""
    out, running, start = [], 0, 0
    shape = layout(histogram)
    for end in shape.ends(bounds, scale):
        if end > start:
            running += sum(counts[start:end])
            start = end
        out.append(running)
    out.append(running + sum(counts[start:]))
    # Added one by one in index order (reduce, not sum: Python 3.12's sum compensates), so
    # the sum is the same float, to the last bit, as a walk over the buckets gives.
    middles = itertools.compress(shape.middles, counts)
    total = functools.reduce(operator.add,
                             map(operator.mul, itertools.compress(counts, counts), middles), 0.0)
    return out, total

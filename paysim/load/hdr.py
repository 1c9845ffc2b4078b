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


class Recorder:
    """``HdrHistogram.record_value(value)`` for histograms of one shape, at a third of its
    cost: hdrh works out a value's bucket through five method calls and ``bin()``; here the
    same arithmetic is inlined (``int.bit_length`` is its count of leading zeros), and one
    value can go into several histograms from one index. The counts, total, min and max come
    out as hdrh's own (a pure test compares them)."""

    def __init__(self, shape: HdrHistogram) -> None:
        self.sub_bucket_mask = shape.sub_bucket_mask
        self.unit_magnitude = shape.unit_magnitude
        self.half_count_magnitude = shape.sub_bucket_half_count_magnitude
        self.half_count = shape.sub_bucket_half_count
        # bit_length(value | mask) less this is hdrh's bucket index.
        self.bucket_shift = shape.unit_magnitude + shape.sub_bucket_half_count_magnitude + 1
        self.counts_len = shape.counts_len

    def index(self, value: int) -> int:
        """The value's index in the counts array (past the end when it is too large)."""
        bucket = (value | self.sub_bucket_mask).bit_length() - self.bucket_shift
        return (((bucket + 1) << self.half_count_magnitude)
                + (value >> (bucket + self.unit_magnitude)) - self.half_count)

    def record(self, value: int, *histograms: HdrHistogram) -> None:
        """Record ``value`` (an int >= 0, as record_value takes it) once in each histogram;
        a value past the histograms' range is not recorded, as record_value does not."""
        index = self.index(value)
        if index >= self.counts_len:
            return
        for histogram in histograms:
            histogram.counts[index] += 1
            histogram.total_count += 1
            if value < histogram.min_value:
                histogram.min_value = value
            if value > histogram.max_value:
                histogram.max_value = value


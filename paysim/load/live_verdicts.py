"""Thresholds judged while a run goes, for the dashboard: the report's own evaluation
(``thresholds.evaluate`` over report.py's values) on the run's measurements as they stand.

A verdict is ``passing``, ``failing`` (so far: ``sent >= 1000`` fails until the thousandth is
sent) or ``pending`` (its metric is not measured yet: no payment completed, or ``lost``,
which only the run's end knows). A threshold with a window is judged on its windows that are
over: a window ends SETTLED_S seconds before the current one, as a second still takes sends
(late by up to the drop limit) and completions for a moment after it ends; a window once
judged is kept, not worked out again each second.

Only the histograms the thresholds name are read (copied under the run's lock, C speed, then
read outside it): HdrHistogram's percentiles walk its buckets in Python, a few ms each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence

from hdrh.histogram import HdrHistogram

from paysim.load.metrics import RunMetrics
from paysim.load.report import (
    LATENCY_METRICS,
    histogram_values,
    latency_histograms,
    ratio_values,
    window_values,
)
from paysim.load.thresholds import Threshold, ThresholdResult, evaluate
from paysim.pipeline import store

SETTLED_S = 2


def live_values(metrics: RunMetrics, now_us: int, target_rate: float | None,
                wanted: Collection[str]) -> dict[str, float]:
    """The threshold metrics over the run so far, as run_values gives them at its end, but
    for ``lost`` (unknown before the run's timeout) and the histograms no name in ``wanted``
    needs."""
    with metrics.lock:
        histograms = {prefix: _copy(histogram)
                      for prefix, histogram in latency_histograms(metrics).items()
                      if _needs(prefix, wanted)}
        sent, completed, dropped = metrics.sent, metrics.completed, metrics.dropped
        approved = sum(n for (status, _), n in metrics.reasons.items() if status == "approved")
        reasons: Counter[str] = Counter()
        for (_, code), n in metrics.reasons.items():
            reasons[code] += n
        achieved_rate = metrics.achieved_rate()
        errors = sum(metrics.errors.values())
    elapsed_s = max(1e-6, (now_us - metrics.started_us) / 1e6)
    values = histogram_values(histograms)
    values.update(ratio_values(completed, approved, dict(reasons)))
    values.update({"dropped": float(dropped), "sent": float(sent),
                   "achieved_rate": achieved_rate, "target": float(target_rate or 0.0),
                   "throughput": completed / elapsed_s, "errors": float(errors)})
    return values


def _needs(prefix: str, wanted: Collection[str]) -> bool:
    return any(name.startswith(prefix) and name[len(prefix):] in LATENCY_METRICS
               for name in wanted)


def _copy(histogram: HdrHistogram) -> HdrHistogram:
    copy = HdrHistogram(histogram.lowest_trackable_value, histogram.highest_trackable_value,
                        histogram.significant_figures)
    copy.add(histogram)
    return copy


class LiveJudge:
    """Judges a run's thresholds on demand; remembers the windows already over."""

    def __init__(self, thresholds: Sequence[Threshold]) -> None:
        self.thresholds = list(thresholds)
        self._windows: dict[tuple[int, int], dict[str, float]] = {}  # (size, first second)

    def verdicts(self, metrics: RunMetrics, now_us: int,
                 target_rate: float | None) -> list[store.LiveVerdict]:
        if not self.thresholds:
            return []
        run = live_values(metrics, now_us, target_rate, {t.metric for t in self.thresholds})
        with metrics.lock:  # as the report: no window past the last second anything was sent
            last_sent = max((i for i, second in metrics.seconds.items() if second.sent),
                            default=-1)
        # The windows whose last second is SETTLED_S or more behind the current one.
        last = min(last_sent, (now_us - metrics.started_us) // 1_000_000 - SETTLED_S)
        out = []
        for threshold in self.thresholds:
            windows: list[tuple[int, dict[str, float]]] = []
            if threshold.window_s:
                size = threshold.window_s
                for first in range(0, max(0, last - size + 2), size):
                    values = self._windows.get((size, first))
                    if values is None:
                        values = self._windows[(size, first)] = window_values(
                            metrics, first, first + size - 1, target_rate)
                    windows.append((first, values))
            out.append(verdict(threshold, evaluate(threshold, run, windows)))
        return out


def verdict(threshold: Threshold, result: ThresholdResult) -> store.LiveVerdict:
    """A result on the run so far, as the dashboard shows it."""
    if result.passed:
        state = store.PASSING
    elif result.actual is None and not result.failed_windows:
        state = store.PENDING
    else:
        state = store.FAILING
    return store.LiveVerdict(threshold.stated(), state, result.actual, result.bound,
                             result.failed_windows)

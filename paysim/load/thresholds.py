"""Pass/fail thresholds, as in k6: ``p99_ms < 250``, ``achieved_rate >= 0.98 * target``.

A threshold holds over the whole run and, when it has a window, over every full window of the
run as well, so a collapse late in a long run cannot pass on the average.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt,
}
_EXPRESSION = re.compile(
    r"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<number>-?\d+(?:\.\d+)?)\s*(?P<target>\*\s*target)?\s*$"
)


@dataclass(frozen=True)
class Threshold:
    expression: str
    metric: str
    op: str
    number: float
    times_target: bool  # "0.98 * target": the bound scales with the target rate
    window_s: int | None = None

    def stated(self) -> str:
        """The expression with its window, as the run lists it: ``p99_ms < 250 @ 10s``."""
        return f"{self.expression} @ {self.window_s}s" if self.window_s else self.expression

    def bound(self, values: Mapping[str, float]) -> float:
        return self.number * values.get("target", 0.0) if self.times_target else self.number

    def holds(self, values: Mapping[str, float]) -> tuple[bool, float | None]:
        """(passed, actual); a metric the run never produced fails."""
        actual = values.get(self.metric)
        if actual is None:
            return False, None
        return OPERATORS[self.op](actual, self.bound(values)), actual


def parse_threshold(text: str, window_s: int | None = None,
                    known: set[str] | None = None) -> Threshold:
    """Parse one expression; ValueError says what was expected."""
    match = _EXPRESSION.match(text)
    if not match:
        raise ValueError("an expression like 'p99_ms < 250' or "
                         f"'achieved_rate >= 0.98 * target', got {text!r}")
    metric = match["metric"]
    if known is not None and metric not in known:
        raise ValueError(f"a known metric ({', '.join(sorted(known))}), got {metric!r}")
    return Threshold(text.strip(), metric, match["op"], float(match["number"]),
                     match["target"] is not None, window_s)


class WorstWindow(msgspec.Struct, frozen=True):
    start_s: int  # the window's first second
    actual: float | None  # the metric in it; None when the window never produced it


class ThresholdResult(msgspec.Struct, frozen=True):
    """A threshold's verdict, as report.json's ``thresholds`` entries hold it."""

    expression: str
    window_s: int | None
    bound: float
    actual: float | None  # over the whole run; None when the run never produced it
    passed: bool  # over the whole run and in every window
    failed_windows: int
    worst_window: WorstWindow | None


def _worst(threshold: Threshold, failed: list[WorstWindow]) -> WorstWindow | None:
    """The failing window furthest past the bound: the highest value under an upper bound,
    the lowest under a lower one; for == and != the first."""
    measured = [w for w in failed if w.actual is not None]
    if not measured:
        return failed[0] if failed else None
    if threshold.op in ("<", "<="):
        return max(measured, key=lambda w: w.actual)
    if threshold.op in (">", ">="):
        return min(measured, key=lambda w: w.actual)
    return measured[0]


def evaluate(threshold: Threshold, run: Mapping[str, float],
             windows: list[tuple[int, Mapping[str, float]]]) -> ThresholdResult:
    """The threshold's verdict: over the run, and its worst window."""
    passed, actual = threshold.holds(run)
    failed: list[WorstWindow] = []
    if threshold.window_s:
        for start, values in windows:
            ok, value = threshold.holds(values)
            if not ok:
                failed.append(WorstWindow(start, value))
    return ThresholdResult(
        expression=threshold.expression, window_s=threshold.window_s,
        bound=threshold.bound(run), actual=actual, passed=passed and not failed,
        failed_windows=len(failed), worst_window=_worst(threshold, failed),
    )

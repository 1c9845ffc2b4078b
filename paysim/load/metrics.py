"""What a run measures, as it happens: HDR histograms per stage, outcomes, a per-second timeline.

Latency is recorded in microseconds into HdrHistogram (3 significant digits, up to 1 hour), the
structure load testers trust: percentiles stay exact to 0.1% whatever the count, and the
encoded histograms in report.json can be merged and compared across runs.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from paysim.domain.messages import NOTIFIED, REQUESTED
from paysim.load import hdr
from paysim.load.hdr import Recorder
from paysim.pipeline import registry
from paysim.pipeline.store import DoneEntry

MAX_LATENCY_US = 3_600_000_000

# Each service's latency: from the time it was handed the payment (the stage time of the
# latest service before it that saw the payment; the request time for the first) to the stage
# time it stamped. Payments the authorizer declines skip the processor: their notifier span
# starts at the authorizer's stamp.
STAGE_STAMPS: dict[str, str] = {spec.name: spec.stamps for spec in registry.PIPELINE
                                if spec.stamps is not None}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, MAX_LATENCY_US, 3)


# Records into every histogram new_histogram() makes: six values per payment, recorded by
# hdrh's own record_value, were the largest share of the sender's Python time after sending.
_record = Recorder(new_histogram()).record
# (stage name, the stamp it ends at), in pipeline order.
_STAGES = tuple(STAGE_STAMPS.items())


@dataclass
class Second:
    """One second of the run: what was sent, what completed, how fast."""

    sent: int = 0
    completed: int = 0
    approved: int = 0
    declined: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    latency: HdrHistogram = field(default_factory=new_histogram)


class RunMetrics:
    """Thread-safe: the sender and the collector record into it, the display reads it."""

    def __init__(self, started_us: int) -> None:
        self.started_us = started_us
        self.lock = threading.Lock()
        self.end_to_end = new_histogram()
        self.stages = {name: new_histogram() for name in STAGE_STAMPS}
        self.send_delay = new_histogram()
        self.reasons: Counter[tuple[str, str]] = Counter()
        self.approved_amounts: Counter[str] = Counter()
        self.seconds: dict[int, Second] = {}
        self.sent = 0
        self.completed = 0
        self.dropped = 0
        self.last_send_us = started_us
        self.errors: Counter[str] = Counter()  # by kind: a target's failures (load/targets)
        self.error_lines: dict[str, str] = {}  # the first line of each kind
        self.operations: OperationMetrics | None = None  # a run with a lifecycle mix

    def _second(self, at_us: int) -> Second:
        index = max(0, (at_us - self.started_us) // 1_000_000)
        second = self.seconds.get(index)
        if second is None:  # not setdefault: a histogram is costly to build for nothing
            second = self.seconds[index] = Second()
        return second

    def record_send(self, intended_us: int, sent_us: int) -> None:
        with self.lock:
            self.sent += 1
            self.last_send_us = max(self.last_send_us, sent_us)
            _record(max(1, sent_us - intended_us), self.send_delay)
            self._second(intended_us).sent += 1

    def achieved_rate(self) -> float:
        """Payments sent per second, from the start to the last send: a generator that falls
        behind stretches the sending and shows a lower rate than asked."""
        span_s = (self.last_send_us - self.started_us) / 1e6
        return self.sent / span_s if span_s > 0 else 0.0

    def record_error(self, kind: str, line: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.error_lines.setdefault(kind, line)

    def record_drop(self) -> None:
        with self.lock:
            self.dropped += 1

    def record_outcome(self, entry: DoneEntry, intended_us: int | None = None) -> None:
        """One payment's done entry. End-to-end latency runs from its intended send time when
        it had one: a stalled pipeline cannot hide behind a sender that waited for it (no
        coordinated omission)."""
        self.record_outcomes([(entry, intended_us)])

    def record_outcomes(self, outcomes: Sequence[tuple[DoneEntry, int | None]]) -> None:
        """record_outcome for each (entry, intended time) of a read, under one lock."""
        with self.lock:
            for entry, intended_us in outcomes:
                self._record_outcome(entry, intended_us)

    def _record_outcome(self, entry: DoneEntry, intended_us: int | None) -> None:
        times = entry.stages
        start = intended_us if intended_us is not None else times.get(REQUESTED)
        self.completed += 1
        self.reasons[(entry.status, entry.reason_code)] += 1
        if entry.status == "approved":
            self.approved_amounts[entry.currency] += entry.amount
        end = times.get(NOTIFIED)
        second = self._second(end if end is not None else start or self.started_us)
        second.completed += 1
        if entry.status == "approved":
            second.approved += 1
        else:
            second.declined += 1
        second.reasons[entry.reason_code] += 1
        if start is not None and end is not None:
            _record(max(1, end - start), self.end_to_end, second.latency)
        last_stamp: int | None = None
        for index, (name, stamp) in enumerate(_STAGES):
            handed = times.get(REQUESTED) if index == 0 else last_stamp
            stamped = times.get(stamp)
            if stamped is not None:
                if handed is not None:
                    _record(max(1, stamped - handed), self.stages[name])
                last_stamp = stamped

    def rolling_p99_ms(self, now_us: int, window_s: int = 5) -> float | None:
        """p99 end-to-end over the last ``window_s`` seconds, for the live display."""
        return self.rolling_ms(now_us, (99.0,), window_s)[0]

    def rolling_ms(self, now_us: int, percentiles: tuple[float, ...],
                   window_s: int = 5) -> list[float | None]:
        """End-to-end percentiles over the last ``window_s`` seconds (None: none completed)."""
        last = (now_us - self.started_us) // 1_000_000
        merged = new_histogram()
        with self.lock:
            for index in range(max(0, last - window_s + 1), last + 1):
                if index in self.seconds:
                    merged.add(self.seconds[index].latency)
        if not merged.get_total_count():
            return [None] * len(percentiles)
        # hdr's one pass at C speed, not hdrh's walk in Python per percentile: each tick
        # (twice a second) took milliseconds of the sender's GIL.
        return [value / 1000 for value in hdr.values_at_percentiles(merged, percentiles)]


class OperationMetrics:
    """The follow-up operations of a run, as they are scheduled and answered. Latency runs
    from each operation's intended time to the ledger's answer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scheduled: Counter[str] = Counter()  # by kind
        self.answered: Counter[str] = Counter()
        self.latency: dict[str, HdrHistogram] = {}
        self.codes: Counter[tuple[str, str]] = Counter()  # (kind, reason code)
        self.amounts: dict[tuple[str, str], Counter[str]] = {}  # (kind, code) -> by currency
        # Operations sent where the payment's state forbids them: (kind, refused) -> count.
        self.invalid: Counter[tuple[str, bool]] = Counter()
        self.last_answer_us: int | None = None

    def record_scheduled(self, kind: str) -> None:
        with self.lock:
            self.scheduled[kind] += 1

    def record_invalid(self, kind: str, refused: bool) -> None:
        with self.lock:
            self.invalid[(kind, refused)] += 1

    def record_answer(self, kind: str, reason_code: str, amount: int, currency: str,
                      intended_us: int, answered_us: int) -> None:
        with self.lock:
            self.answered[kind] += 1
            self.codes[(kind, reason_code)] += 1
            self.amounts.setdefault((kind, reason_code), Counter())[currency] += amount
            histogram = self.latency.get(kind)
            if histogram is None:
                histogram = self.latency[kind] = new_histogram()
            _record(min(MAX_LATENCY_US, max(1, answered_us - intended_us)), histogram)
            if self.last_answer_us is None or answered_us > self.last_answer_us:
                self.last_answer_us = answered_us

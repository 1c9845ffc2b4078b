"""The run report: the document behind the summary table, report.json and report.html.

Schema ``paysim.report/1`` (docs/report.md describes each field). Latency figures are in
milliseconds; each latency block also carries its HdrHistogram, base64-encoded as HdrHistogram
libraries exchange them, so runs can be merged and compared.

The report is typed (msgspec Structs, in report.json's key order) and written with
``to_dict``. A field that report.json leaves out when it has no value (a latency block's
figures when nothing was measured, a second's latency when nothing completed) defaults to
None and is omitted; a field report.json writes as null has no default and stays.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram

from paysim.domain import decisions, money
from paysim.domain.messages import OperationKind
from paysim.load import hdr
from paysim.load.metrics import OperationMetrics, RunMetrics, Second, new_histogram
from paysim.load.thresholds import Threshold, ThresholdResult, evaluate

SCHEMA = "paysim.report/1"
LOST_IDS_LISTED = 100
# The latency columns of every table, as LatencyBlock.percentiles gives them.
PERCENTILE_LABELS = ("p50", "p90", "p99", "p99.9", "max")


class LatencyBlock(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Latency in ms; the figures are absent (None) when ``count`` is 0."""

    count: int
    min_ms: float | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p99_9_ms: float | None = None
    max_ms: float | None = None
    histogram: str | None  # HdrHistogram of µs, base64; null when count is 0

    def percentiles(self) -> tuple[tuple[str, float | None], ...]:
        """(label, ms) for each of PERCENTILE_LABELS: the tables' latency columns."""
        return tuple(zip(PERCENTILE_LABELS, (self.p50_ms, self.p90_ms, self.p99_ms,
                                             self.p99_9_ms, self.max_ms), strict=True))


class Load(msgspec.Struct, frozen=True):
    """The load offered."""

    mode: str  # "open" (scheduled) or "burst" (as fast as possible)
    target_rate: float | None  # None in burst mode
    achieved_rate: float
    stages: list[dict[str, float]]
    scheduled: int
    sent: int
    dropped: int
    send_delay: LatencyBlock


class ReasonRow(msgspec.Struct, frozen=True):
    status: str
    reason_code: str
    reason_text: str
    count: int
    share: float


class ApprovedAmount(msgspec.Struct, frozen=True):
    minor_units: int
    formatted: str


class Outcomes(msgspec.Struct, frozen=True):
    """What came back."""

    completed: int
    lost: int
    lost_ids: list[str]  # the first LOST_IDS_LISTED
    throughput_per_s: float
    approved_ratio: float
    declined_ratio: float
    by_reason: list[ReasonRow]  # most frequent first
    approved_amounts: dict[str, ApprovedAmount]  # by ISO 4217 code

    @property
    def approved(self) -> int:
        return sum(row.count for row in self.by_reason if row.status == "approved")


class Latency(msgspec.Struct, frozen=True):
    end_to_end: LatencyBlock
    stages: dict[str, LatencyBlock]  # only the stages that saw payments


class TimelineSecond(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One second of the run; the latency figures are absent when nothing completed."""

    second: int
    sent: int
    completed: int
    approved: int
    declined: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


class OperationCodeRow(msgspec.Struct, frozen=True):
    """The answers of one code to one kind of operation."""

    kind: str
    reason_code: str
    reason_text: str
    count: int
    amounts: dict[str, int]  # what they moved, in minor units by ISO 4217 code


class OperationKindRow(msgspec.Struct, frozen=True):
    """One kind of operation: how many were planned and answered, and how fast (from each
    one's intended time to the ledger's answer)."""

    kind: str
    scheduled: int
    answered: int
    lost: int  # planned but not answered by the end of the run
    latency: LatencyBlock


class InvalidRow(msgspec.Struct, frozen=True):
    """Operations of one kind sent on purpose where the payment's state forbids them: each
    should be refused (``accepted`` is a ledger fault)."""

    kind: str
    answered: int
    refused: int
    accepted: int


class LifecycleReport(msgspec.Struct, frozen=True):
    """The follow-up operations of a run with a lifecycle mix."""

    scheduled: int
    answered: int
    lost: int
    throughput_per_s: float  # answered operations per second of the run
    kinds: list[OperationKindRow]  # in the operations' order (capture, increment, ...)
    by_code: list[OperationCodeRow]  # by kind, then most frequent first
    invalid: list[InvalidRow] = msgspec.field(default_factory=list)


class WorkerRow(msgspec.Struct, frozen=True, omit_defaults=True):
    """One generator of a distributed run: its share and what it did. A dead one's figures
    are its last beat's."""

    share: int
    host: str
    pid: int
    scheduled: int
    sent: int
    completed: int
    dropped: int
    status: str  # ok, failed (handed in with an error) or dead (never handed in)
    rate_per_s: float = 0.0
    error: str | None = None


class ErrorRow(msgspec.Struct, frozen=True):
    """One kind of failure of a target: how many, and the first one's line."""

    kind: str
    count: int
    first: str


AUDIT_NOT_APPLICABLE = ("not applicable: the payments went to a system that is not paysim's "
                        "pipeline, so `paysim audit` has no outcomes or ledgers to reconcile")


@dataclass(frozen=True)
class TargetInfo:
    """The system a run drove instead of paysim's pipeline."""

    kind: str  # "http" or "kafka"
    address: str  # the URL, or the topic payments went to
    outcome_topic: str | None = None  # kafka: where outcomes were read
    correlate: str | None = None  # kafka: "<pointer> = {field}"
    concurrency: int | None = None  # http: requests in flight at most


class TargetReport(msgspec.Struct, frozen=True):
    """A run against another system: where it went, and what failed (counted apart from the
    outcomes: an error is neither approved nor declined, nor lost)."""

    kind: str
    address: str
    outcome_topic: str | None
    correlate: str | None
    concurrency: int | None
    errors: int
    by_error: list[ErrorRow]  # most frequent first
    audit: str  # AUDIT_NOT_APPLICABLE


class RunReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """One run's report: report.json's top level. ``lifecycle`` only on a run with a
    lifecycle mix, ``workers`` only on a distributed one, ``target`` only on a run against
    another system (load/targets)."""

    schema: str  # SCHEMA
    run_id: str
    scenario: str | None
    seed: int | None
    via: str
    started_at: str  # ISO 8601 with the UTC offset
    duration_s: float
    load: Load
    outcomes: Outcomes
    latency: Latency
    timeline: list[TimelineSecond]
    thresholds: list[ThresholdResult]
    passed: bool  # every threshold passed (also when there are none)
    lifecycle: LifecycleReport | None = None
    workers: list[WorkerRow] | None = None
    target: TargetReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as report.json holds it (plain dicts and lists, in its key order)."""
        return msgspec.to_builtins(self)

    @property
    def failed_thresholds(self) -> list[ThresholdResult]:
        return [t for t in self.thresholds if not t.passed]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    seed: int | None
    via: str
    mode: str  # "open" (scheduled) or "burst" (as fast as possible)
    scenario: str | None
    target_rate: float | None  # mean of the schedule; None in burst mode
    stages: list[dict[str, float]]
    scheduled: int
    lost_ids: list[str]
    finished_us: int
    target: TargetInfo | None = None


def latency_block(histogram: HdrHistogram, with_histogram: bool = True) -> LatencyBlock:
    """The block of a histogram; ``with_histogram`` False leaves its encoding out (None),
    which costs more than the figures."""
    count = histogram.get_total_count()
    if not count:
        return LatencyBlock(count=0, histogram=None)
    # hdrh's own mean and percentiles, at C speed (load/hdr.py: theirs walk in Python).
    counts = hdr.counts_copy(histogram)
    p50, p90, p99, p99_9 = (value / 1000 for value in hdr.values_at_percentiles(
        histogram, (50.0, 90.0, 99.0, 99.9), counts))
    return LatencyBlock(
        count=count, min_ms=histogram.get_min_value() / 1000,
        mean_ms=round(hdr.mean(histogram, counts) / 1000, 3),
        p50_ms=p50, p90_ms=p90, p99_ms=p99, p99_9_ms=p99_9,
        max_ms=histogram.get_max_value() / 1000,
        histogram=histogram.encode().decode() if with_histogram else None,
    )


def build_report(metrics: RunMetrics, info: RunInfo,
                 thresholds: Sequence[Threshold] = ()) -> RunReport:
    """The report of a finished run, with each threshold's verdict."""
    with metrics.lock:
        duration_s = max(1e-6, (info.finished_us - metrics.started_us) / 1e6)
        completed = metrics.completed
        reasons = sorted(metrics.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        approved = sum(n for (status, _), n in reasons if status == "approved")
        started_at = datetime.fromtimestamp(metrics.started_us / 1e6, UTC).isoformat()
        load = Load(
            mode=info.mode, target_rate=info.target_rate,
            achieved_rate=round(metrics.achieved_rate(), 2), stages=info.stages,
            scheduled=info.scheduled, sent=metrics.sent, dropped=metrics.dropped,
            send_delay=latency_block(metrics.send_delay),
        )
        outcomes = Outcomes(
            completed=completed, lost=len(info.lost_ids),
            lost_ids=info.lost_ids[:LOST_IDS_LISTED],
            throughput_per_s=round(completed / duration_s, 1),
            approved_ratio=round(approved / completed, 6) if completed else 0.0,
            declined_ratio=round(1 - approved / completed, 6) if completed else 0.0,
            by_reason=[ReasonRow(status, code, _reason_text(code, info.target is not None), n,
                                 round(n / completed, 6))
                       for (status, code), n in reasons],
            approved_amounts={currency: ApprovedAmount(amount,
                                                       money.format_amount(amount, currency))
                              for currency, amount in sorted(metrics.approved_amounts.items())},
        )
        latency = Latency(
            end_to_end=latency_block(metrics.end_to_end),
            stages={name: latency_block(h) for name, h in metrics.stages.items()
                    if h.get_total_count()},
        )
        timeline = [_timeline_second(index, sec) for index, sec in sorted(metrics.seconds.items())]
        target = None if info.target is None else target_report(info.target, metrics)
    lifecycle = (lifecycle_report(metrics.operations, duration_s)
                 if metrics.operations is not None else None)
    # Outside the lock: the windows take it again.
    verdicts = check_thresholds(thresholds, metrics, load, outcomes, timeline)
    return RunReport(
        schema=SCHEMA, run_id=info.run_id, scenario=info.scenario, seed=info.seed,
        via=info.via, started_at=started_at, duration_s=round(duration_s, 3), load=load,
        outcomes=outcomes, latency=latency, timeline=timeline, thresholds=verdicts,
        passed=all(t.passed for t in verdicts), lifecycle=lifecycle, target=target,
    )


def _reason_text(code: str, from_target: bool) -> str:
    """What a code means: paysim's (ISO 8583) text; a target's own codes are its own."""
    if from_target:
        return "none given" if code == "-" else decisions.REASONS.get(code, "the target's code")
    return decisions.reason_text(code)


def target_report(info: TargetInfo, metrics: RunMetrics) -> TargetReport:
    """The target block; the caller holds ``metrics.lock``."""
    rows = [ErrorRow(kind, count, metrics.error_lines[kind])
            for kind, count in sorted(metrics.errors.items(), key=lambda kv: (-kv[1], kv[0]))]
    return TargetReport(kind=info.kind, address=info.address, outcome_topic=info.outcome_topic,
                        correlate=info.correlate, concurrency=info.concurrency,
                        errors=sum(metrics.errors.values()), by_error=rows,
                        audit=AUDIT_NOT_APPLICABLE)


def lifecycle_report(operations: OperationMetrics, duration_s: float) -> LifecycleReport:
    """The lifecycle table: per kind of operation, then per kind and answer code."""
    with operations.lock:
        order = {kind.value: index for index, kind in enumerate(OperationKind)}
        kinds = sorted(operations.scheduled, key=lambda kind: order.get(kind, len(order)))
        rows = [OperationKindRow(
            kind=kind, scheduled=operations.scheduled[kind],
            answered=operations.answered[kind],
            lost=operations.scheduled[kind] - operations.answered[kind],
            latency=latency_block(operations.latency.get(kind) or new_histogram()))
            for kind in kinds]
        codes = sorted(operations.codes.items(),
                       key=lambda kv: (order.get(kv[0][0], len(order)), -kv[1], kv[0][1]))
        by_code = [OperationCodeRow(kind, code, decisions.reason_text(code), count,
                                    dict(sorted(operations.amounts[(kind, code)].items())))
                   for (kind, code), count in codes]
        invalid_kinds = sorted({kind for kind, _ in operations.invalid},
                               key=lambda kind: order.get(kind, len(order)))
        invalid = [InvalidRow(kind, operations.invalid[(kind, True)]
                              + operations.invalid[(kind, False)],
                              operations.invalid[(kind, True)], operations.invalid[(kind, False)])
                   for kind in invalid_kinds]
    scheduled = sum(row.scheduled for row in rows)
    answered = sum(row.answered for row in rows)
    return LifecycleReport(scheduled=scheduled, answered=answered, lost=scheduled - answered,
                           throughput_per_s=round(answered / duration_s, 1), kinds=rows,
                           by_code=by_code, invalid=invalid)


def _timeline_second(index: int, sec: Second) -> TimelineSecond:
    # Just the three figures a second shows, not latency_block: its mean walks the whole
    # histogram, and over every second of a long run that was most of the report's cost.
    histogram = sec.latency
    measured = histogram.get_total_count() > 0
    return TimelineSecond(
        second=index, sent=sec.sent, completed=sec.completed, approved=sec.approved,
        declined=sec.declined,
        p50_ms=histogram.get_value_at_percentile(50.0) / 1000 if measured else None,
        p99_ms=histogram.get_value_at_percentile(99.0) / 1000 if measured else None,
        max_ms=histogram.get_max_value() / 1000 if measured else None)


# ------------------------------------------------------------------------- thresholds


def check_thresholds(thresholds: Sequence[Threshold], metrics: RunMetrics, load: Load,
                     outcomes: Outcomes, timeline: Sequence[TimelineSecond],
                     ) -> list[ThresholdResult]:
    """Each threshold over the whole run and, where it has a window, every full window."""
    if not thresholds:
        return []  # the run's values cost a pass over every histogram: only when judged
    run = run_values(load, outcomes, metrics)
    last = max((s.second for s in timeline if s.sent), default=-1)
    results = []
    for threshold in thresholds:
        windows = []
        if threshold.window_s:
            size = threshold.window_s
            for first in itertools.count(0, size):
                if first + size - 1 > last:
                    break
                windows.append((first, window_values(metrics, first, first + size - 1,
                                                     load.target_rate)))
        results.append(evaluate(threshold, run, windows))
    return results


def window_values(metrics: RunMetrics, first: int, last: int,
                  target_rate: float | None) -> dict[str, float]:
    """Threshold metrics over seconds [first, last] of the run (inclusive)."""
    merged = new_histogram()
    sent = completed = approved = 0
    reasons: dict[str, int] = {}
    with metrics.lock:
        for index in range(first, last + 1):
            sec = metrics.seconds.get(index)
            if sec is None:
                continue
            merged.add(sec.latency)
            sent += sec.sent
            completed += sec.completed
            approved += sec.approved
            for code, n in sec.reasons.items():
                reasons[code] = reasons.get(code, 0) + n
    values = latency_values(merged)
    values.update(ratio_values(completed, approved, reasons))
    values["sent"] = float(sent)
    values["achieved_rate"] = sent / (last - first + 1)
    values["target"] = float(target_rate or 0.0)
    return values


def latency_values(histogram: HdrHistogram, prefix: str = "") -> dict[str, float]:
    """The threshold metrics of a histogram: ``{prefix}p99_ms``, ``{prefix}p999_ms``..."""
    block = msgspec.structs.asdict(latency_block(histogram, with_histogram=False))
    return {prefix + name.replace("p99_9", "p999"): float(value)
            for name, value in block.items() if name.endswith("_ms") and value is not None}


def ratio_values(completed: int, approved: int, reasons: dict[str, int]) -> dict[str, float]:
    values = {"completed": float(completed),
              "approved_ratio": approved / completed if completed else 0.0,
              "declined_ratio": 1 - approved / completed if completed else 0.0}
    for code in decisions.REASONS:
        values[f"reason_{code.lower()}_ratio"] = (reasons.get(code, 0) / completed
                                                  if completed else 0.0)
    return values


# The names latency_values gives a histogram's figures (after its prefix).
LATENCY_METRICS = frozenset(name.replace("p99_9", "p999") for name in
                            LatencyBlock.__struct_fields__ if name.endswith("_ms"))


def latency_histograms(metrics: RunMetrics) -> dict[str, HdrHistogram]:
    """The run's histograms that thresholds name, by the prefix of their metrics: end to end
    (none), each stage's (``authorizer_``...) and the send delay (``send_delay_``)."""
    return {"": metrics.end_to_end, **{f"{name}_": h for name, h in metrics.stages.items()},
            "send_delay_": metrics.send_delay}


def histogram_values(histograms: dict[str, HdrHistogram]) -> dict[str, float]:
    values: dict[str, float] = {}
    for prefix, histogram in histograms.items():
        values.update(latency_values(histogram, prefix))
    return values


def run_values(load: Load, outcomes: Outcomes, metrics: RunMetrics) -> dict[str, float]:
    """Threshold metrics over the whole run."""
    reasons: dict[str, int] = {}
    for row in outcomes.by_reason:
        reasons[row.reason_code] = reasons.get(row.reason_code, 0) + row.count
    values = histogram_values(latency_histograms(metrics))
    values.update(ratio_values(outcomes.completed, outcomes.approved, reasons))
    values.update({"lost": float(outcomes.lost), "dropped": float(load.dropped),
                   "sent": float(load.sent), "achieved_rate": float(load.achieved_rate),
                   "target": float(load.target_rate or 0.0),
                   "throughput": float(outcomes.throughput_per_s)})
    with metrics.lock:
        values["errors"] = float(sum(metrics.errors.values()))
    return values

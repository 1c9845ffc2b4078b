"""The summary of a run: outcomes by status and reason, amounts, throughput, latencies."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction

from paysim import decisions, money
from paysim.schema import AUTHORIZED, NOTIFIED, PROCESSED, REQUESTED
from paysim.sending import RunResult

# Each stage's latency: from the time it was handed the payment to the time it passed it on.
STAGE_SPANS: dict[str, tuple[str, str]] = {
    "authorizer": (REQUESTED, AUTHORIZED),
    "processor": (AUTHORIZED, PROCESSED),
    "notifier": (PROCESSED, NOTIFIED),
}
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class ReasonRow:
    status: str
    reason_code: str
    reason_text: str
    count: int
    share: float


@dataclass(frozen=True)
class Summary:
    run_id: str
    sent: int
    completed: int
    missing: list[str]
    reasons: list[ReasonRow]
    approved_amounts: dict[str, str]  # currency -> formatted total
    elapsed_s: float
    throughput_per_s: float
    end_to_end: LatencyStats | None
    stages: dict[str, LatencyStats]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    # Exact arithmetic: 99.9 / 100 * 1000 is 999.0000000000001 in floats, one rank too far.
    rank = max(1, math.ceil(Fraction(str(pct)) / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(values_us: list[int]) -> LatencyStats | None:
    if not values_us:
        return None
    ms = sorted(v / 1000 for v in values_us)
    p50, p90, p99 = (round(percentile(ms, p), 2) for p in PERCENTILES)
    return LatencyStats(len(ms), p50, p90, p99, round(ms[-1], 2))


def _span(outcome: dict[str, str], start: str, end: str) -> int | None:
    if f"t_{start}" in outcome and f"t_{end}" in outcome:
        return int(outcome[f"t_{end}"]) - int(outcome[f"t_{start}"])
    return None


def summarize(result: RunResult) -> Summary:
    outcomes = [result.outcomes[p.payment_id] for p in result.sent
                if p.payment_id in result.outcomes]
    counts = Counter((o["status"], o["reason_code"]) for o in outcomes)
    total = len(outcomes) or 1
    reasons = [ReasonRow(status, code, decisions.reason_text(code), n, round(n / total, 4))
               for (status, code), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    approved: Counter[str] = Counter()
    for o in outcomes:
        if o["status"] == decisions.Status.APPROVED:
            approved[o["currency"]] += int(o["amount"])
    elapsed = max(1e-6, (result.finished_us - result.started_us) / 1e6)
    stages = {}
    for stage, (start, end) in STAGE_SPANS.items():
        stats = latency_stats([v for o in outcomes if (v := _span(o, start, end)) is not None])
        if stats:
            stages[stage] = stats
    # Payments the authorizer declined skip the processor: their notifier span starts there.
    declined_early = [v for o in outcomes if f"t_{PROCESSED}" not in o
                      and (v := _span(o, AUTHORIZED, NOTIFIED)) is not None]
    if declined_early:
        merged = [v for o in outcomes if (v := _span(o, PROCESSED, NOTIFIED)) is not None]
        stages["notifier"] = latency_stats(merged + declined_early)
    return Summary(
        run_id=result.run_id, sent=len(result.sent), completed=len(outcomes),
        missing=[p.payment_id for p in result.missing], reasons=reasons,
        approved_amounts={cur: money.format_amount(n, cur) for cur, n in sorted(approved.items())},
        elapsed_s=round(elapsed, 3), throughput_per_s=round(len(outcomes) / elapsed, 1),
        end_to_end=latency_stats([v for o in outcomes
                                  if (v := _span(o, REQUESTED, NOTIFIED)) is not None]),
        stages=stages,
    )

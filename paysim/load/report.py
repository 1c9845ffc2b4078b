"""The run report: the document behind the summary table, report.json and report.html.

Schema ``paysim.report/1`` (docs/report.md describes each field). Latency figures are in
milliseconds; each latency block also carries its HdrHistogram, base64-encoded as HdrHistogram
libraries exchange them, so runs can be merged and compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hdrh.histogram import HdrHistogram

from paysim.domain import decisions, money
from paysim.load.metrics import PERCENTILES, RunMetrics, new_histogram

SCHEMA = "paysim.report/1"
LOST_IDS_LISTED = 100


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


def _key(pct: float) -> str:
    return f"p{pct:g}".replace(".", "_") + "_ms"


def latency_block(histogram: HdrHistogram, with_histogram: bool = True) -> dict[str, Any]:
    count = histogram.get_total_count()
    block: dict[str, Any] = {"count": count}
    if count:
        block["min_ms"] = histogram.get_min_value() / 1000
        block["mean_ms"] = round(histogram.get_mean_value() / 1000, 3)
        for pct in PERCENTILES:
            block[_key(pct)] = histogram.get_value_at_percentile(pct) / 1000
        block["max_ms"] = histogram.get_max_value() / 1000
    if with_histogram:
        block["histogram"] = histogram.encode().decode() if count else None
    return block


def build_report(metrics: RunMetrics, info: RunInfo,
                 thresholds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    with metrics.lock:
        duration_s = max(1e-6, (info.finished_us - metrics.started_us) / 1e6)
        completed = metrics.completed
        reasons = sorted(metrics.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        approved = sum(n for (status, _), n in reasons if status == "approved")
        report: dict[str, Any] = {
            "schema": SCHEMA,
            "run_id": info.run_id,
            "scenario": info.scenario,
            "seed": info.seed,
            "via": info.via,
            "started_at": datetime.fromtimestamp(metrics.started_us / 1e6, UTC).isoformat(),
            "duration_s": round(duration_s, 3),
            "load": {
                "mode": info.mode,
                "target_rate": info.target_rate,
                "achieved_rate": round(metrics.achieved_rate(), 2),
                "stages": info.stages,
                "scheduled": info.scheduled,
                "sent": metrics.sent,
                "dropped": metrics.dropped,
                "send_delay": latency_block(metrics.send_delay),
            },
            "outcomes": {
                "completed": completed,
                "lost": len(info.lost_ids),
                "lost_ids": info.lost_ids[:LOST_IDS_LISTED],
                "throughput_per_s": round(completed / duration_s, 1),
                "approved_ratio": round(approved / completed, 6) if completed else 0.0,
                "declined_ratio": round(1 - approved / completed, 6) if completed else 0.0,
                "by_reason": [
                    {"status": status, "reason_code": code,
                     "reason_text": decisions.reason_text(code), "count": n,
                     "share": round(n / completed, 6)}
                    for (status, code), n in reasons
                ],
                "approved_amounts": {
                    currency: {"minor_units": amount,
                               "formatted": money.format_amount(amount, currency)}
                    for currency, amount in sorted(metrics.approved_amounts.items())
                },
            },
            "latency": {
                "end_to_end": latency_block(metrics.end_to_end),
                "stages": {name: latency_block(h) for name, h in metrics.stages.items()
                           if h.get_total_count()},
            },
            "timeline": [
                {"second": index, "sent": sec.sent, "completed": sec.completed,
                 "approved": sec.approved, "declined": sec.declined,
                 **{k: v for k, v in latency_block(sec.latency, with_histogram=False).items()
                    if k in ("p50_ms", "p99_ms", "max_ms")}}
                for index, sec in sorted(metrics.seconds.items())
            ],
        }
    report["thresholds"] = thresholds or []
    report["passed"] = all(t["passed"] for t in report["thresholds"])
    return report


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
    block = latency_block(histogram, with_histogram=False)
    return {prefix + k.replace("p99_9", "p999"): float(v) for k, v in block.items()
            if k.endswith("_ms")}


def ratio_values(completed: int, approved: int, reasons: dict[str, int]) -> dict[str, float]:
    values = {"completed": float(completed),
              "approved_ratio": approved / completed if completed else 0.0,
              "declined_ratio": 1 - approved / completed if completed else 0.0}
    for code in decisions.REASONS:
        values[f"reason_{code.lower()}_ratio"] = (reasons.get(code, 0) / completed
                                                  if completed else 0.0)
    return values


def run_values(report: dict[str, Any], metrics: RunMetrics) -> dict[str, float]:
    """Threshold metrics over the whole run."""
    outcomes = report["outcomes"]
    reasons: dict[str, int] = {}
    for row in outcomes["by_reason"]:
        reasons[row["reason_code"]] = reasons.get(row["reason_code"], 0) + row["count"]
    approved = sum(r["count"] for r in outcomes["by_reason"] if r["status"] == "approved")
    values = latency_values(metrics.end_to_end)
    for name, histogram in metrics.stages.items():
        values.update(latency_values(histogram, prefix=f"{name}_"))
    values.update(latency_values(metrics.send_delay, prefix="send_delay_"))
    values.update(ratio_values(outcomes["completed"], approved, reasons))
    load = report["load"]
    values.update({"lost": float(outcomes["lost"]), "dropped": float(load["dropped"]),
                   "sent": float(load["sent"]), "achieved_rate": float(load["achieved_rate"]),
                   "target": float(load["target_rate"] or 0.0),
                   "throughput": float(outcomes["throughput_per_s"])})
    return values

"""The benchmark's paysim phases: a burst at saturation and open-model runs at fixed rates.

Both go through the same load engine as `paysim send` (straight onto Kafka), so the figures
are the ones a user sees; only the summary kept here is the benchmark's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from paysim.infra.config import Settings
from paysim.load.plan import SendRequest, plan_run
from paysim.load.report import build_report
from paysim.load.runner import LoadRun, Tick

LATENCY_KEYS = ("p50_ms", "p99_ms", "p99_9_ms", "max_ms")


@dataclass(frozen=True)
class PhaseFigures:
    """One load run, reduced to what the benchmark prints and keeps."""

    run_id: str
    target_rate: float | None  # None: a burst, as fast as the pipeline takes it
    sent: int
    completed: int
    lost: int
    dropped: int
    duration_s: float
    throughput_per_s: float  # completed / (first send to last outcome)
    achieved_rate: float  # sent / (first send to last send)
    latency: dict[str, dict[str, float]]  # "end_to_end" and each stage -> LATENCY_KEYS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def figures_from_report(report: dict[str, Any]) -> PhaseFigures:
    """The benchmark's summary of a `paysim send` report (report.json's shape)."""
    blocks = {"end_to_end": report["latency"]["end_to_end"], **report["latency"]["stages"]}
    return PhaseFigures(
        run_id=report["run_id"], target_rate=report["load"]["target_rate"],
        sent=report["load"]["sent"], completed=report["outcomes"]["completed"],
        lost=report["outcomes"]["lost"], dropped=report["load"]["dropped"],
        duration_s=report["duration_s"], throughput_per_s=report["outcomes"]["throughput_per_s"],
        achieved_rate=report["load"]["achieved_rate"],
        latency={name: {key: block[key] for key in LATENCY_KEYS if key in block}
                 for name, block in blocks.items()},
    )


def run_phase(settings: Settings, request: SendRequest,
              on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    plan, options, _, _ = plan_run(settings, request)
    metrics, info = LoadRun(settings, plan, options).run(on_tick)
    return figures_from_report(build_report(metrics, info))


def saturation(settings: Settings, count: int, seed: int,
               on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    """``count`` payments sent as fast as the generator can: the pipeline's ceiling."""
    return run_phase(settings, SendRequest(count=count, seed=seed, timeout=300), on_tick)


def open_model(settings: Settings, rate: float, duration_s: float, seed: int,
               on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    """Payments at ``rate`` per second on schedule for ``duration_s``, whatever the pipeline
    does: latency counts from each payment's intended send time."""
    return run_phase(settings, SendRequest(rate=rate, duration=f"{duration_s:g}s", seed=seed,
                                           timeout=120), on_tick)

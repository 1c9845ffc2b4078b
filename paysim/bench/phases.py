"""The benchmark's paysim phases: a burst at saturation and open-model runs at fixed rates.

Both go through the same load engine as `paysim send` (straight onto Kafka), so the figures
are the ones a user sees; only the summary kept here is the benchmark's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from paysim.infra.config import Settings
from paysim.load.plan import SendRequest
from paysim.load.report import LatencyBlock, RunReport
from paysim.load.run import run_load
from paysim.load.runner import Tick


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
    latency: dict[str, dict[str, float]]  # "end_to_end" and each stage -> _kept(block)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kept(block: LatencyBlock) -> dict[str, float]:
    """The latency figures the benchmark keeps (results.json's keys), those measured."""
    figures = {"p50_ms": block.p50_ms, "p99_ms": block.p99_ms, "p99_9_ms": block.p99_9_ms,
               "max_ms": block.max_ms}
    return {key: value for key, value in figures.items() if value is not None}


def figures_from_report(report: RunReport) -> PhaseFigures:
    """The benchmark's summary of a `paysim send` report."""
    latency = report.latency
    blocks = {"end_to_end": latency.end_to_end, **latency.stages}
    return PhaseFigures(
        run_id=report.run_id, target_rate=report.load.target_rate, sent=report.load.sent,
        completed=report.outcomes.completed, lost=report.outcomes.lost,
        dropped=report.load.dropped, duration_s=report.duration_s,
        throughput_per_s=report.outcomes.throughput_per_s,
        achieved_rate=report.load.achieved_rate,
        latency={name: _kept(block) for name, block in blocks.items()},
    )


def run_phase(settings: Settings, request: SendRequest,
              on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    return figures_from_report(run_load(settings, request, on_tick))


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

"""The benchmark's paysim phases: a burst at saturation, the same with a lifecycle mix, and
open-model runs at fixed rates.

Both go through the same load engine as `paysim send` (straight onto Kafka), so the figures
are the ones a user sees; only the summary kept here is the benchmark's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.load.lifecycle import Delay, LifecycleSpec
from paysim.load.plan import SendRequest
from paysim.load.report import LatencyBlock, RunReport
from paysim.load.run import run_load
from paysim.load.runner import Tick
from paysim.load.scenario import load_scenario

# The lifecycle phase's mix, shipped beside the package in the repository.
MARKETPLACE = Path(__file__).resolve().parents[2] / "scenarios" / "marketplace.toml"


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
    # A lifecycle mix's follow-up operations: answered, lost, and payments + operations
    # answered per second of the run (None without a mix).
    operations: int = 0
    operations_lost: int = 0
    messages_per_s: float | None = None

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
    mix = report.lifecycle
    if mix is not None:
        blocks.update({f"op_{row.kind}": row.latency for row in mix.kinds
                       if row.latency.count})
    return PhaseFigures(
        run_id=report.run_id, target_rate=report.load.target_rate, sent=report.load.sent,
        completed=report.outcomes.completed, lost=report.outcomes.lost,
        dropped=report.load.dropped, duration_s=report.duration_s,
        throughput_per_s=report.outcomes.throughput_per_s,
        achieved_rate=report.load.achieved_rate,
        latency={name: _kept(block) for name, block in blocks.items()},
        operations=mix.answered if mix else 0, operations_lost=mix.lost if mix else 0,
        messages_per_s=(round((report.outcomes.completed + mix.answered) / report.duration_s, 1)
                        if mix else None),
    )


def run_phase(settings: Settings, request: SendRequest,
              on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    return figures_from_report(run_load(settings, request, on_tick))


def saturation(settings: Settings, count: int, seed: int,
               on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    """``count`` payments sent as fast as the generator can: the pipeline's ceiling."""
    return run_phase(settings, SendRequest(count=count, seed=seed, timeout=300), on_tick)


def immediate(spec: LifecycleSpec) -> LifecycleSpec:
    """The mix with every follow-up sent as soon as what it follows is answered: the
    pipeline's ceiling, not the days a real payment's life spreads over. Holds the mix leaves
    to expire are voided instead, and holds keep the services' TTL: at saturation answers lag
    by seconds, so a short TTL would expire the holds the mix means to capture, and a long
    one would measure the TTL, not the pipeline."""
    now = Delay()
    return replace(spec, capture_delay=now, increment_delay=now, void_delay=now,
                   refund_delay=now, reversal_delay=now, dispute_delay=now, resolve_delay=now,
                   void_share=spec.void_share + spec.expire_share, expire_share=0.0,
                   hold_ttl_s=None)


def lifecycle_saturation(settings: Settings, count: int, seed: int,
                         on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    """``count`` payments of scenarios/marketplace.toml as fast as the generator can, each
    with its follow-up operations (captures, refunds, disputes...) sent at once."""
    spec = load_scenario(MARKETPLACE).lifecycle
    if spec is None:
        raise PaysimError(f"{MARKETPLACE} has no [lifecycle] table")
    return run_phase(settings, SendRequest(count=count, seed=seed, scenario=str(MARKETPLACE),
                                           lifecycle=immediate(spec), timeout=300), on_tick)


def open_model(settings: Settings, rate: float, duration_s: float, seed: int,
               on_tick: Callable[[Tick], None] | None = None) -> PhaseFigures:
    """Payments at ``rate`` per second on schedule for ``duration_s``, whatever the pipeline
    does: latency counts from each payment's intended send time."""
    return run_phase(settings, SendRequest(rate=rate, duration=f"{duration_s:g}s", seed=seed,
                                           timeout=120), on_tick)

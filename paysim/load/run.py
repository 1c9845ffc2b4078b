"""A load run from start to end: the one entry point of `paysim send`, the benchmark and tests.

``plan_run`` (load/plan.py) turns a request into a ``PlannedRun``, raising on any mistake in
it before anything is sent; ``run_load`` sends it, collects the outcomes and returns the
report with each threshold's verdict.
"""

from __future__ import annotations

from collections.abc import Callable

from paysim.infra.config import Settings
from paysim.load.plan import PlannedRun
from paysim.load.report import RunReport, build_report
from paysim.load.runner import LoadRun, Tick


def run_load(settings: Settings, planned: PlannedRun,
             on_progress: Callable[[Tick], None] | None = None) -> RunReport:
    """Run ``planned`` to its end; ``on_progress`` gets a Tick every half second and a last
    one when the run is over."""
    metrics, info = LoadRun(settings, planned.plan, planned.options).run(on_progress)
    return build_report(metrics, info, planned.thresholds)

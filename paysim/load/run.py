"""A load run from start to end: the one entry point of `paysim send`, the benchmark and tests.

``run_load`` plans the request (load/plan.py: flags, scenario and replay file to a
``PlannedRun``, raising on any mistake in them before anything is sent), checks that the
pipeline is running, sends, collects the outcomes, and returns the report with each threshold's
verdict.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.load.live import LivePublisher
from paysim.load.plan import SendRequest, plan_run
from paysim.load.prometheus import exposed
from paysim.load.report import RunReport, build_report
from paysim.load.runner import Interrupt, LoadRun, Tick
from paysim.pipeline import registry, store


def run_load(settings: Settings, request: SendRequest,
             on_progress: Callable[[Tick], None] | None = None,
             interrupt: Interrupt | None = None) -> RunReport:
    """Run what ``request`` asks to its end, or until ``interrupt`` stops it early (the report
    then covers what was sent); ``on_progress`` gets a Tick every half second and a last one
    when the run is over. Each tick is also published in Redis for the dashboard."""
    # Planned first, so a mistake in the request is named even when nothing is running.
    planned = plan_run(settings, request)
    if planned.target is None:  # another system: paysim's services have no part in it
        require_services(settings, request.via)
    run = LoadRun(settings, planned.plan, planned.options, interrupt=interrupt,
                  target=planned.target)
    live = LivePublisher(settings, run.run_id, planned.plan.scenario, planned.thresholds,
                         lambda: run.metrics)
    with exposed(settings, lambda: run.metrics), live:
        metrics, info = run.run(live.wrap(on_progress))
    return build_report(metrics, info, planned.thresholds)


def require_services(settings: Settings, via: str) -> None:
    """Fail at once, not after the timeout, when nothing would process the payments: every
    pipeline service, and the HTTP edge when payments go through it."""
    client = store.connect(settings)
    try:
        running = store.running_services(client)
    except redis.RedisError as exc:
        raise store.unreachable(settings, exc) from None
    finally:
        client.close()
    needed = [spec.name for spec in registry.ALL if spec.in_pipeline or via == "http"]
    missing = [name for name in needed if name not in running]
    if missing:
        raise PaysimError(f"no {', '.join(missing)} running: start the pipeline with "
                          "`paysim run-all` (or `paysim run-all --detach`)")

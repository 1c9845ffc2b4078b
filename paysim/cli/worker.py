"""`paysim worker`: a generator on this host joining a distributed run."""

from __future__ import annotations

import click

from paysim.cli.options import FiniteFloatRange, with_settings
from paysim.cli.render import console, safe
from paysim.infra.collector import tune_for_batches
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.load.distributed import run_worker


@click.command()
@click.option("--run", "run_id", help="The run to join (default: the oldest with a share "
                                      "free).")
@click.option("--wait", type=FiniteFloatRange(0.1, 3600), default=60.0, show_default=True,
              help="Seconds to wait for a run with a share free.")
@with_settings()
def worker(settings: Settings, run_id: str | None, wait: float) -> None:
    """Join a distributed run (`paysim send --workers N --local-workers M` on another host,
    M < N): send this generator's share of its schedule and hand in what was measured; the
    coordinator prints the merged report."""

    def joined(run: str, share: int, workers: int) -> None:
        console.print(f"joined run {safe(run)} as generator {share + 1} of {workers}")

    tune_for_batches()
    handed = run_worker(settings, run_id, wait, joined)
    console.print(f"handed in: sent {handed.metrics.sent:,} of {handed.scheduled:,}, "
                  f"completed {handed.metrics.completed:,}, lost {handed.lost:,}")
    if handed.error:
        raise PaysimError(handed.error)

"""A run's live progress in Redis, for the dashboard: published at each progress tick.

The run already makes a Tick every half second for the terminal; this writes it (with the
outcomes by reason so far and the run's thresholds) as a ``store.RunProgress``, one HSET. The
last one says ``finished`` and is left to go stale, so a dashboard polling once a second sees
the run's end.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from types import TracebackType

import redis

from paysim.infra.config import Settings
from paysim.load.runner import LoadRun, Tick
from paysim.pipeline import store


class LivePublisher:
    """Publishes ``run``'s ticks; a context manager around the run (its end is published)."""

    def __init__(self, settings: Settings, run: LoadRun, thresholds: list[str]) -> None:
        self.settings = settings
        self.run = run
        self.thresholds = thresholds
        self.started_at = time.time()
        self._client: redis.Redis | None = None
        self._last: Tick | None = None

    def __enter__(self) -> LivePublisher:
        self._client = store.connect(self.settings, timeout=2.0)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._client is None:
            return
        if self._last is not None:
            self._publish(self._last, finished=True)
        self._client.close()

    def wrap(self, forward: Callable[[Tick], None] | None) -> Callable[[Tick], None]:
        """The run's on_tick: publish, then hand the tick on to ``forward``."""
        def on_tick(tick: Tick) -> None:
            self._last = tick
            self._publish(tick)
            if forward is not None:
                forward(tick)
        return on_tick

    def progress(self, tick: Tick, finished: bool = False) -> store.RunProgress:
        metrics = self.run.metrics
        reasons: dict[str, int] = {}
        if metrics is not None:
            with metrics.lock:
                reasons = {f"{status}/{code}": n for (status, code), n in metrics.reasons.items()}
        return store.RunProgress(
            run_id=self.run.run_id, pid=os.getpid(), scenario=self.run.plan.scenario,
            started_at=self.started_at, seen_at=time.time(), elapsed_s=round(tick.elapsed_s, 3),
            scheduled=tick.scheduled, sent=tick.sent, completed=tick.completed,
            dropped=tick.dropped, target_rate=tick.target_rate,
            current_rate=tick.current_rate, rolling_p99_ms=tick.rolling_p99_ms,
            rolling_p50_ms=tick.rolling_p50_ms,
            reasons=reasons, thresholds=self.thresholds, finished=finished)

    def _publish(self, tick: Tick, finished: bool = False) -> None:
        if self._client is None:
            return
        # The run reports Redis failing on its own; the dashboard just misses a second.
        with contextlib.suppress(redis.RedisError):
            store.write_run_progress(self._client, self.progress(tick, finished))

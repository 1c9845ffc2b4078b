"""A run's live progress in Redis, for the dashboard: published at each progress tick.

The run already makes a Tick every half second for the terminal; this writes it (with the
outcomes by reason so far and each threshold's verdict on the run so far) as a
``store.RunProgress``, one HSET. The last one says ``finished`` and is left to go stale, so a
dashboard polling once a second sees the run's end. The same publisher serves a single run
(its own RunMetrics) and a distributed run's coordinator (its generators' measurements merged,
load/distributed.py), so the page shows both alike.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import redis

from paysim.domain.messages import now_us
from paysim.infra.config import Settings
from paysim.load.live_verdicts import LiveJudge
from paysim.load.metrics import RunMetrics
from paysim.load.runner import Tick
from paysim.load.thresholds import Threshold
from paysim.pipeline import store

JUDGE_EVERY_S = 1.0  # ticks come every half second; the page updates once a second


class LivePublisher:
    """Publishes a run's ticks; a context manager around the run (its end is published).

    ``metrics`` gives the run's measurements so far (None before it starts); ``generators``,
    for a distributed run, the rows of its generators."""

    def __init__(self, settings: Settings, run_id: str, scenario: str | None,
                 thresholds: Sequence[Threshold], metrics: Callable[[], RunMetrics | None],
                 generators: Callable[[], list[store.GeneratorProgress]] | None = None,
                 ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.scenario = scenario
        self.thresholds = [t.stated() for t in thresholds]
        self.metrics = metrics
        self.generators = generators
        self.judge = LiveJudge(thresholds)
        self.started_at = time.time()
        self._client: redis.Redis | None = None
        self._last: Tick | None = None
        self._verdicts: list[store.LiveVerdict] = []
        self._judged_at = 0.0

    def __enter__(self) -> LivePublisher:
        self._client = store.connect(self.settings, timeout=2.0)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._client is None:
            return
        if self._last is not None:
            self.publish(self._last, finished=True)
        self._client.close()

    def wrap(self, forward: Callable[[Tick], None] | None) -> Callable[[Tick], None]:
        """The run's on_tick: publish, then hand the tick on to ``forward``."""
        def on_tick(tick: Tick) -> None:
            self.publish(tick)
            if forward is not None:
                forward(tick)
        return on_tick

    def progress(self, tick: Tick, finished: bool = False) -> store.RunProgress:
        metrics = self.metrics()
        reasons: dict[str, int] = {}
        if metrics is not None:
            with metrics.lock:
                reasons = {f"{status}/{code}": n for (status, code), n in metrics.reasons.items()}
            now = time.monotonic()
            if finished or now - self._judged_at >= JUDGE_EVERY_S:
                self._verdicts = self.judge.verdicts(metrics, now_us(), tick.target_rate)
                self._judged_at = now
        return store.RunProgress(
            run_id=self.run_id, pid=os.getpid(), scenario=self.scenario,
            started_at=self.started_at, seen_at=time.time(), elapsed_s=round(tick.elapsed_s, 3),
            scheduled=tick.scheduled, sent=tick.sent, completed=tick.completed,
            dropped=tick.dropped, target_rate=tick.target_rate,
            current_rate=tick.current_rate, rolling_p99_ms=tick.rolling_p99_ms,
            rolling_p50_ms=tick.rolling_p50_ms,
            reasons=reasons, thresholds=self.thresholds, finished=finished,
            verdicts=self._verdicts,
            generators=self.generators() if self.generators is not None else [])

    def publish(self, tick: Tick, finished: bool = False) -> None:
        self._last = tick
        if self._client is None:
            return
        # The run reports Redis failing on its own; the dashboard just misses a second.
        with contextlib.suppress(redis.RedisError):
            store.write_run_progress(self._client, self.progress(tick, finished))

"""A distributed run's live measurements: each generator hands in, once a second, what it has
measured so far (load/metrics_wire.py, its timeline cut to the last LIVE_SECONDS seconds, so
that the record stays small however long the run), and the coordinator merges them into one
RunMetrics, which it publishes for the dashboard exactly as a single run publishes its own
(load/live.py): the counts, the reasons, the rolling end-to-end p50/p99 over the merged
timeline, and each threshold's verdict.

The merged timeline: a second is worked out again at each merge while every generator still
carries it, then kept as it was last merged (older seconds no longer change: a send counts at
its intended second and is dropped past the send-delay limit, a completion at its own).
"""

from __future__ import annotations

import dataclasses
import time

import redis

from paysim.domain.messages import now_us
from paysim.load import metrics_wire
from paysim.load.metrics import RunMetrics, Second
from paysim.load.runner import Tick
from paysim.pipeline import store

LIVE_SECONDS = 8  # the rolling p50/p99 read 5; the rest is time for the coordinator to read
LIVE_EVERY_S = 1.0
LIVE_TTL_S = 3600


def live_key(run_id: str, share: int) -> str:
    return f"paysim:dist:{run_id}:live:{share}"


class LiveHandIn:
    """A generator's side: its measurements so far, written at most once a second."""

    def __init__(self, client: redis.Redis, run_id: str, share: int,
                 every_s: float = LIVE_EVERY_S) -> None:
        self.client = client
        self.key = live_key(run_id, share)
        self.every_s = every_s
        self._at = -every_s

    def __call__(self, metrics: RunMetrics | None, last: bool = False) -> None:
        """Hand in, if a second passed since the last time; ``last``: the run is over (its
        final figures, handed in before the generator's result, so the coordinator that
        sees every result merges the final ones)."""
        now = time.monotonic()
        if metrics is None or (now - self._at < self.every_s and not last):
            return
        self._at = now
        current = (now_us() - metrics.started_us) // 1_000_000
        wire = metrics_wire.to_wire(metrics, seconds_from=max(0, current - LIVE_SECONDS + 1))
        self.client.set(self.key, metrics_wire.encode_wire(wire), ex=LIVE_TTL_S)


class LiveMerge:
    """The coordinator's side: the generators' latest hand-ins, merged (at most once a
    second), and the rows of the generators for the page."""

    def __init__(self, run_id: str, workers: int, start_at_us: int,
                 every_s: float = LIVE_EVERY_S) -> None:
        self.run_id = run_id
        self.every_s = every_s
        self.workers = workers
        self.start_at_us = start_at_us
        self.merged: RunMetrics | None = None
        self.generators: list[store.GeneratorProgress] = []
        self._kept: dict[int, Second] = {}
        self._at = -every_s

    def refresh(self, client: redis.Redis, last: bool = False) -> RunMetrics | None:
        """The merge, made again if a second passed (or ``last``: every generator is done)."""
        now = time.monotonic()
        if now - self._at < self.every_s and not last:
            return self.merged
        self._at = now
        raws = store.mget(client, [live_key(self.run_id, k) for k in range(self.workers)])
        wires = [metrics_wire.decode_wire(raw) for raw in raws if raw]
        if not wires:
            return self.merged
        merged = metrics_wire.merge(wires, self.start_at_us)
        # From this second on, every hand-in carries the timeline: the merge is whole there.
        whole_from = max(wire.seconds_from + (wire.started_us - self.start_at_us) // 1_000_000
                         for wire in wires)
        for index, second in merged.seconds.items():
            if index >= whole_from:
                self._kept[index] = second
            else:
                self._kept.setdefault(index, second)
        merged.seconds = dict(self._kept)
        self.merged = merged
        return merged

    def tick(self, tick: Tick) -> Tick:
        """``tick`` (counts summed from the beats) with the merged rolling p50/p99, which
        the beats (each generator's own p99) cannot give."""
        if self.merged is None:
            return tick
        p50, p99 = self.merged.rolling_ms(now_us(), (50.0, 99.0))
        return dataclasses.replace(tick, rolling_p50_ms=p50, rolling_p99_ms=p99)

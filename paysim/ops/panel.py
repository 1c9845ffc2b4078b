"""What run-all's live panel shows of each service: the supervisor's children joined with their
heartbeats."""

from __future__ import annotations

import time
from dataclasses import dataclass

from paysim.infra.config import Settings
from paysim.ops.run_all import external_lag
from paysim.ops.supervisor import Child
from paysim.pipeline import store
from paysim.stack.process import is_alive


@dataclass(frozen=True)
class ServiceView:
    name: str
    state: str  # up, starting, restarting, down
    pid: int | None
    restarts: int
    processed: int
    dead_letters: int
    lag: int | None  # None: not known (an external service's group while Kafka is away)
    uptime_s: float | None
    metrics_url: str  # "" when it serves none (or has not reported yet)


def view(children: list[Child], beats: dict[str, store.Heartbeat]) -> list[ServiceView]:
    """Each child as the live panel shows it: the supervisor's view joined with its heartbeat."""
    rows = []
    for child in children:
        beat = beats.get(child.name)
        alive = child.running and child.pid is not None and is_alive(child.pid)
        if not alive:
            state = "restarting" if child.restart_at else "down"
        else:
            state = "up" if beat and beat.pid == child.pid else "starting"
        rows.append(ServiceView(
            child.name, state, child.pid if alive else None, child.restarts,
            beat.processed if beat else 0, beat.dead_letters if beat else 0,
            beat.lag if beat else 0, time.time() - child.started_at if alive else None,
            beat.metrics_url if beat and state == "up" else "",
        ))
    return rows


class ExternalLags:
    """The rows of the services a run-all left external: their consumer groups' lags, read
    from Kafka at most every ``every_s`` (the panel redraws twice a second)."""

    def __init__(self, settings: Settings, names: tuple[str, ...], every_s: float = 2.0) -> None:
        self.settings, self.names, self.every_s = settings, names, every_s
        self._read_at = -every_s
        self._rows: list[ServiceView] = []

    def rows(self) -> list[ServiceView]:
        if self.names and time.monotonic() - self._read_at >= self.every_s:
            self._read_at = time.monotonic()
            self._rows = [ServiceView(name, "external", None, 0, 0, 0,
                                      external_lag(self.settings, name, timeout=1.0), None, "")
                          for name in self.names]
        return self._rows

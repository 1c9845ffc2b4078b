"""What processes cost while a benchmark phase runs: resident memory and CPU time, from /proc."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int | None:
    """Resident set size now; None once the process is gone (a zombie, exited but not yet
    reaped by its parent, still has /proc entries but no resident pages)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * PAGE_BYTES if pages else None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time so far; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may hold spaces: count fields after its ")".
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Usage:
    """One process over a phase."""

    name: str
    pid: int
    cpu_start_s: float
    cpu_end_s: float = 0.0
    rss: list[int] = field(default_factory=list)  # samples, in order

    @property
    def cpu_s(self) -> float:
        return max(0.0, self.cpu_end_s - self.cpu_start_s)

    def rss_window_mean(self, first: bool, share: float = 0.1) -> int:
        """Mean RSS over the first (or last) ``share`` of the samples."""
        if not self.rss:
            return 0
        n = max(1, int(len(self.rss) * share))
        window = self.rss[:n] if first else self.rss[-n:]
        return sum(window) // len(window)

    @property
    def rss_growth(self) -> float:
        """Relative growth from the first tenth of the phase to the last."""
        start = self.rss_window_mean(first=True)
        return (self.rss_window_mean(first=False) - start) / start if start else 0.0


class Sampler:
    """Samples each named process's RSS on a thread; CPU time is read at start and stop."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.usage = {name: Usage(name, pid, cpu_seconds(pid) or 0.0)
                      for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        for usage in self.usage.values():
            usage.cpu_end_s = cpu_seconds(usage.pid) or usage.cpu_start_s

    def _sample(self) -> None:
        for usage in self.usage.values():
            rss = rss_bytes(usage.pid)
            if rss is not None:
                usage.rss.append(rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

"""What processes cost while a benchmark phase runs: resident memory and CPU time, from /proc."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
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


def stat_cpu(path: str) -> tuple[str, float] | None:
    """The name and the user plus system CPU time so far of a process or thread, from its
    /proc stat file (``/proc/<pid>/stat``, ``/proc/<pid>/task/<tid>/stat``); None once it is
    gone."""
    try:
        with open(path) as stat:
            text = stat.read()
        # The name (field 2) is in parentheses and may hold spaces and parentheses itself:
        # count the fields after its last ")".
        fields = text[text.rfind(")") + 1:].split()
        return (text[text.find("(") + 1:text.rfind(")")],
                (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time so far; None once the process is gone."""
    found = stat_cpu(f"/proc/{pid}/stat")
    return None if found is None else found[1]


def total_rss(pids: tuple[int, ...]) -> int | None:
    """The processes' resident bytes now, summed; None once one is gone."""
    sizes = [rss_bytes(pid) for pid in pids]
    return None if None in sizes else sum(size or 0 for size in sizes)


def total_cpu(pids: tuple[int, ...]) -> float | None:
    """The processes' CPU seconds so far, summed; None once one is gone."""
    times = [cpu_seconds(pid) for pid in pids]
    return None if None in times else sum(time or 0.0 for time in times)


@dataclass
class Usage:
    """One component over a phase: one process, or the instances of one service (their CPU
    and RSS summed)."""

    name: str
    pids: tuple[int, ...]
    cpu_start_s: float
    cpu_end_s: float = 0.0
    rss: list[int] = field(default_factory=list)  # samples, in order

    @property
    def pid(self) -> int:
        """The first instance's."""
        return self.pids[0]

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
    """Samples each named process's RSS on a thread; CPU time is read at start and stop. A
    name may stand for several processes (a service's instances): their figures are summed."""

    def __init__(self, pids: Mapping[str, int | tuple[int, ...]],
                 interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.usage = {}
        for name, each in pids.items():
            group = each if isinstance(each, tuple) else (each,)
            self.usage[name] = Usage(name, group, total_cpu(group) or 0.0)
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
            usage.cpu_end_s = total_cpu(usage.pids) or usage.cpu_start_s

    def _sample(self) -> None:
        for usage in self.usage.values():
            rss = total_rss(usage.pids)
            if rss is not None:
                usage.rss.append(rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

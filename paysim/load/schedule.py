"""Open-model schedules: when each payment is meant to be sent, whatever the pipeline does.

A profile is a list of stages, each (duration, target rate). As in k6's ramping-arrival-rate,
the rate moves linearly from the previous stage's target (or ``start_rate``) to the stage's
target over the stage. The n-th payment is due when the integral of the rate reaches n, so the
intended times follow the profile exactly and do not depend on how fast anything answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from paysim.infra.config import finite_number

# The bounds of every load profile, whatever describes it (--rate, --stage, --start-rate,
# --count, a scenario's load table, replay --rate): one generator process sends far less than
# MAX_RATE, and a run keeps a ledger entry per payment it schedules.
MAX_RATE = 1_000_000  # payments per second
MAX_SCHEDULED = 100_000_000  # payments in one run


@dataclass(frozen=True)
class Stage:
    duration_s: float
    target_rate: float  # payments per second at the end of the stage


@dataclass(frozen=True)
class Profile:
    stages: tuple[Stage, ...]
    start_rate: float = 0.0

    @classmethod
    def constant(cls, rate: float, duration_s: float) -> Profile:
        return cls((Stage(duration_s, rate),), start_rate=rate)

    @property
    def duration_s(self) -> float:
        return sum(stage.duration_s for stage in self.stages)

    def scheduled(self) -> float:
        """The integral of the rate: payments the profile schedules (inf past float range)."""
        total, rate = 0.0, self.start_rate
        for stage in self.stages:
            total += (rate + stage.target_rate) / 2 * stage.duration_s
            rate = stage.target_rate
        return total

    def expected_count(self) -> int:
        """Payments the profile schedules in all."""
        return math.floor(self.scheduled() + 1e-9)

    def rate_at(self, t: float) -> float:
        """The target rate ``t`` seconds into the run."""
        begin, rate = 0.0, self.start_rate
        for stage in self.stages:
            if t <= begin + stage.duration_s:
                return rate + (stage.target_rate - rate) * (t - begin) / stage.duration_s
            begin, rate = begin + stage.duration_s, stage.target_rate
        return rate

    def mean_rate(self) -> float:
        return self.expected_count() / self.duration_s if self.duration_s else 0.0

    def offsets(self) -> Iterator[float]:
        """Intended send times, seconds from the start, ascending."""
        begin, rate, done = 0.0, self.start_rate, 0.0  # done: payments due before this stage
        n = 1
        for stage in self.stages:
            r0, r1, length = rate, stage.target_rate, stage.duration_s
            slope = (r1 - r0) / length if length else 0.0
            stage_total = (r0 + r1) / 2 * length
            while n - done <= stage_total + 1e-9:
                k = n - done  # payments due within this stage, up to this one
                # Solve r0*t + slope*t^2/2 = k for the smallest t >= 0.
                if abs(slope) < 1e-12:
                    t = k / r0
                else:
                    t = (-r0 + math.sqrt(max(0.0, r0 * r0 + 2 * slope * k))) / slope
                yield begin + min(t, length)
                n += 1
            begin, rate, done = begin + length, r1, done + stage_total


def scheduled_count(profile: Profile, limit: int | None = None) -> int:
    """Payments ``profile`` schedules, at most ``limit``; ValueError past MAX_SCHEDULED."""
    total = profile.scheduled()
    if limit is not None:
        total = min(total, limit)
    if total > MAX_SCHEDULED:
        would = f"{math.floor(total):,}" if math.isfinite(total) else "endless"
        raise ValueError(f"the profile would schedule {would} payments; at most "
                         f"{MAX_SCHEDULED:,} a run")
    return math.floor(total + 1e-9)


_DURATION = "a duration like 90s, 2m, 1h30m or 500ms"


def parse_duration(text: str) -> float:
    """'90s', '2m', '1h30m', '500ms' or a plain number of seconds -> seconds (finite)."""
    text = str(text).strip().lower()
    try:
        seconds = finite_number(text)
    except ValueError:
        seconds = _with_units(text)
    if not math.isfinite(seconds):  # digits enough to overflow, such as 400 nines
        raise ValueError(f"{_DURATION}, got {text!r}")
    return seconds


def _with_units(text: str) -> float:
    if not text:
        raise ValueError(f"{_DURATION}, got ''")
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        char = text[i]
        if char.isdigit() or char == ".":
            number += char
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else char
        if unit not in units or not number:
            raise ValueError(f"{_DURATION}, got {text!r}")
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"{_DURATION}, got {text!r}")
    return total

"""A capacity model: from each process's CPU per 1,000 payments (measured at saturation), the
payments/s each component would sustain per core, and which one saturates first on a machine
of C cores with N partitions per topic and M Redis primaries. A projection, not a measurement.

The model (docs/performance.md, "The capacity model"):
- CPU per payment is a constant of each component: what the run measured, whatever the load
  and the machine (in truth batches grow and per-payment costs fall under heavier load, and
  other cores may be faster or slower than the measuring machine's).
- A pipeline service runs as instances of one Python process, each using at most one core;
  a consumer group gives a member beyond the partition count nothing, so a service uses at
  most min(N, C) cores.
- A Redis primary runs commands on one thread: Redis uses at most min(M, C) cores, the keys'
  work spread evenly over the primaries.
- The broker is multi-threaded: it may use every core (one broker's work, as measured;
  replication to other brokers is not counted).
- The generator is one Python process per `send` worker, each using at most one core: it
  uses at most min(W, C) cores (W: one worker per core unless given).
- All components share the machine's C cores in proportion to their CPU per payment, so on
  its own the machine sustains C / (the sum of every component's CPU per payment); a
  component whose core limit is reached first caps the rate below that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from paysim.pipeline import registry

BASIS = "projected from this run's CPU per 1,000 payments, not measured"
DEFAULT_CORES = (2, 8, 32)
# 1 like `paysim stack up`, 3 like `paysim stack up --redis-cluster`.
DEFAULT_PRIMARIES = (1, 3)

# The benchmark's names for the processes that are not pipeline services.
REDIS = "redis"
BROKER = "broker"
GENERATOR = "generator"


class Scaling(Enum):
    """How many cores a component can put to work."""

    PARTITIONS = "one core per instance, up to the partitions"
    PRIMARIES = "one core per Redis primary"
    ANY = "any core (multi-threaded)"
    WORKERS = "one core per send worker"


def scaling_of(name: str) -> Scaling:
    if name == REDIS:
        return Scaling.PRIMARIES
    if name == GENERATOR:
        return Scaling.WORKERS
    if name in registry.PIPELINE_NAMES:
        return Scaling.PARTITIONS
    return Scaling.ANY  # the broker; any other process is assumed to use every core too


@dataclass(frozen=True)
class Component:
    """One process's measured cost."""

    name: str
    cpu_s_per_1000: float
    scaling: Scaling

    @property
    def cpu_s_per_payment(self) -> float:
        return self.cpu_s_per_1000 / 1000

    @property
    def per_core_per_s(self) -> float:
        """Payments/s one core of it sustains (infinite for a component that cost nothing)."""
        return 1 / self.cpu_s_per_payment if self.cpu_s_per_payment > 0 else math.inf


@dataclass(frozen=True)
class Machine:
    """What is projected: C cores, N partitions per topic, M Redis primaries, W send workers."""

    cores: int
    partitions: int
    primaries: int
    workers: int | None = None  # None: one per core

    def usable_cores(self, scaling: Scaling) -> int:
        """The cores a component scaling so can keep busy on this machine."""
        limit = {Scaling.PARTITIONS: self.partitions, Scaling.PRIMARIES: self.primaries,
                 Scaling.ANY: self.cores,
                 Scaling.WORKERS: self.workers or self.cores}[scaling]
        return min(limit, self.cores)


@dataclass(frozen=True)
class Ceiling:
    """One component on one machine."""

    name: str
    usable_cores: int
    ceiling_per_s: float  # with every core it can use: usable cores x payments/s per core
    cores_used: float  # at the projected rate: what it would keep busy


@dataclass(frozen=True)
class Projection:
    machine: Machine
    shared_per_s: float  # every core busy, split in proportion to each component's demand
    projected_per_s: float  # the lower of that and every component's ceiling
    bottleneck: str  # the component whose ceiling is lowest, or CORES
    ceilings: tuple[Ceiling, ...]

    @property
    def busiest(self) -> str | None:
        """The component that takes the largest share of the cores (None without any)."""
        return max(self.ceilings, key=lambda c: c.cores_used).name if self.ceilings else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.machine), "shared_per_s": _finite(self.shared_per_s),
                "projected_per_s": _finite(self.projected_per_s),
                "bottleneck": self.bottleneck, "busiest": self.busiest,
                "components": {c.name: {"usable_cores": c.usable_cores,
                                        "ceiling_per_s": _finite(c.ceiling_per_s),
                                        "cores_used": round(c.cores_used, 2)}
                               for c in self.ceilings}}


# The bottleneck when no component's own limit comes first: every core is busy.
CORES = "all cores"


def components_from(cpu_s_per_1000: Mapping[str, float | None]) -> list[Component]:
    """Each measured process (one without a figure is left out)."""
    return [Component(name, cost, scaling_of(name)) for name, cost in cpu_s_per_1000.items()
            if cost is not None]


def project(components: Iterable[Component], machine: Machine) -> Projection:
    """The payments/s a machine sustains, and what stops it going faster."""
    components = list(components)
    demand = sum(c.cpu_s_per_payment for c in components)  # core-seconds per payment
    shared = machine.cores / demand if demand > 0 else math.inf
    limits = {c.name: machine.usable_cores(c.scaling) * c.per_core_per_s for c in components}
    first = min(limits, key=lambda name: limits[name], default=None)
    projected = min(shared, limits[first]) if first is not None else shared
    # A tie goes to the component: its own limit is what a bigger machine would not lift.
    bottleneck = first if first is not None and limits[first] <= shared else CORES
    ceilings = tuple(
        Ceiling(c.name, machine.usable_cores(c.scaling), limits[c.name],
                projected * c.cpu_s_per_payment if math.isfinite(projected) else 0.0)
        for c in components)
    return Projection(machine, shared, projected, bottleneck, ceilings)


@dataclass(frozen=True)
class Projected:
    """Which machines to project (bench's --project-* options)."""

    cores: tuple[int, ...] = DEFAULT_CORES
    partitions: int | None = None  # None: the run's (`paysim bench` passes paysim's default)
    primaries: tuple[int, ...] = DEFAULT_PRIMARIES
    workers: int | None = None  # send workers; None: one per core

    def machines(self, run_partitions: int) -> list[Machine]:
        """Every (primaries, cores) pair, in the table's column order."""
        partitions = self.partitions or run_partitions
        return [Machine(c, partitions, m, self.workers) for m in self.primaries
                for c in self.cores]


@dataclass(frozen=True)
class Measured:
    """The run the CPU figures come from."""

    cores: int | None  # the measuring machine's
    partitions: int  # its topics.partitions
    payments_per_s: float  # at saturation


def capacity_figures(cpu_s_per_1000: Mapping[str, float | None],
                     projected: Iterable[Machine], measured: Measured) -> dict[str, Any]:
    """results.json's "capacity": the measured inputs, each component's rate per core, the
    projection for each machine, and the check against the run itself: the cores the measured
    rate kept busy by the same figures (on a machine that was paysim's alone, close to all of
    them; far fewer when other work shared it or something other than CPU held it back)."""
    components = components_from(cpu_s_per_1000)
    busy = measured.payments_per_s * sum(c.cpu_s_per_payment for c in components)
    return {
        "basis": BASIS,
        "measured": {**asdict(measured), "cores_busy": round(busy, 2)},
        "components": [{"name": c.name, "cpu_s_per_1000": c.cpu_s_per_1000,
                        "per_core_per_s": _finite(c.per_core_per_s),
                        "scaling": c.scaling.value} for c in components],
        "machines": [project(components, machine).as_dict() for machine in projected],
    }


def _finite(value: float) -> float | None:
    """Whole payments/s (rounded once, so the table shows what results.json holds); JSON has
    no infinity: None for a rate nothing limits."""
    return float(round(value)) if math.isfinite(value) else None

"""The capacity model (paysim/bench/capacity.py): figures worked out by hand."""

from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from paysim.bench.capacity import (
    BASIS,
    CORES,
    Component,
    Machine,
    Measured,
    Projected,
    Scaling,
    capacity_figures,
    components_from,
    project,
)
from paysim.cli.bench import capacity_table

# CPU seconds per 1,000 payments; 0.25 ms of CPU per payment in all.
# Per core: authorizer and notifier 40,000/s; processor and redis 20,000/s; broker 25,000/s;
# generator 16,667/s.
MEASURED = {"authorizer": 0.025, "processor": 0.05, "notifier": 0.025, "redis": 0.05,
            "broker": 0.04, "generator": 0.06}
COMPONENTS = components_from(MEASURED)


def projected(cores: int, primaries: int = 1, partitions: int = 6,
              workers: int | None = None):
    return project(COMPONENTS, Machine(cores, partitions, primaries, workers))


def test_each_component_scales_by_its_own_limit() -> None:
    scaling = {c.name: c.scaling for c in COMPONENTS}
    assert scaling == {"authorizer": Scaling.PARTITIONS, "processor": Scaling.PARTITIONS,
                       "notifier": Scaling.PARTITIONS, "redis": Scaling.PRIMARIES,
                       "broker": Scaling.ANY, "generator": Scaling.WORKERS}
    machine = Machine(cores=8, partitions=6, primaries=3, workers=2)
    assert [machine.usable_cores(s) for s in Scaling] == [6, 3, 8, 2]
    assert Machine(cores=2, partitions=6, primaries=3).usable_cores(Scaling.PARTITIONS) == 2
    assert Machine(cores=8, partitions=6, primaries=3).usable_cores(Scaling.WORKERS) == 8


def test_payments_per_core_is_the_inverse_of_cpu_per_payment() -> None:
    per_core = {c.name: round(c.per_core_per_s) for c in COMPONENTS}
    assert per_core == {"authorizer": 40_000, "processor": 20_000, "notifier": 40_000,
                        "redis": 20_000, "broker": 25_000, "generator": 16_667}
    assert Component("ledger", 0.0, Scaling.PARTITIONS).per_core_per_s == math.inf
    nothing = project([], Machine(2, 6, 1))  # no figures: nothing to name, no error
    assert nothing.bottleneck == CORES and nothing.busiest is None


def test_two_cores_run_out_before_any_component_reaches_its_limit() -> None:
    small = projected(2)
    assert small.shared_per_s == pytest.approx(8000)  # 2 cores / 0.25 ms
    assert small.projected_per_s == pytest.approx(8000) and small.bottleneck == CORES
    ceilings = {c.name: c for c in small.ceilings}
    assert ceilings["redis"].ceiling_per_s == pytest.approx(20_000)  # one primary
    assert ceilings["processor"].ceiling_per_s == pytest.approx(40_000)  # 2 of 6 partitions
    assert ceilings["generator"].cores_used == pytest.approx(0.48)  # 8,000/s x 0.06 ms
    assert sum(c.cores_used for c in small.ceilings) == pytest.approx(2.0)
    assert small.busiest == "generator"


def test_one_redis_primary_saturates_first_at_8_cores_and_three_move_it_on() -> None:
    one = projected(8, primaries=1)
    assert one.shared_per_s == pytest.approx(32_000)
    assert one.bottleneck == "redis" and one.projected_per_s == pytest.approx(20_000)
    assert {c.name: c.cores_used for c in one.ceilings}["redis"] == pytest.approx(1.0)

    three = projected(8, primaries=3)  # redis 60,000/s: the cores come first again
    assert three.bottleneck == CORES and three.projected_per_s == pytest.approx(32_000)

    big = projected(32, primaries=3)  # cores 128,000/s; processor 6 x 20,000; redis 60,000
    assert big.bottleneck == "redis" and big.projected_per_s == pytest.approx(60_000)


def test_too_few_partitions_or_generator_workers_cap_the_rate() -> None:
    narrow = projected(32, primaries=3, partitions=2)  # processor: 2 x 20,000/s
    assert narrow.bottleneck == "processor" and narrow.projected_per_s == pytest.approx(40_000)
    one_worker = projected(32, primaries=3, workers=1)  # one generator process: 16,667/s
    assert one_worker.bottleneck == "generator"
    assert one_worker.projected_per_s == pytest.approx(1e6 / 60)


def test_the_projected_machines_and_what_results_json_keeps() -> None:
    machines = Projected().machines(run_partitions=6)
    assert [(m.cores, m.primaries, m.partitions) for m in machines] == [
        (2, 1, 6), (8, 1, 6), (32, 1, 6), (2, 3, 6), (8, 3, 6), (32, 3, 6)]
    assert Projected(partitions=12).machines(6)[0].partitions == 12

    kept = capacity_figures({**MEASURED, "ledger": 0.0, "gone": None}, machines,
                            Measured(2, 6, 6000.0))
    json.dumps(kept, allow_nan=False)  # no infinity in results.json
    assert kept["basis"] == BASIS
    # 6,000/s x 0.25 ms of CPU per payment: the run kept 1.5 of its 2 cores busy.
    assert kept["measured"] == {"cores": 2, "partitions": 6, "payments_per_s": 6000.0,
                                "cores_busy": 1.5}
    assert [c["name"] for c in kept["components"]][-1] == "ledger"  # "gone": no figure
    assert kept["components"][0] == {"name": "authorizer", "cpu_s_per_1000": 0.025,
                                     "per_core_per_s": 40_000.0,
                                     "scaling": Scaling.PARTITIONS.value}
    eight = kept["machines"][1]
    assert (eight["cores"], eight["primaries"], eight["bottleneck"]) == (8, 1, "redis")
    assert eight["projected_per_s"] == 20_000.0 and eight["shared_per_s"] == 32_000.0
    assert eight["components"]["ledger"] == {"usable_cores": 6, "ceiling_per_s": None,
                                             "cores_used": 0.0}


def test_the_table_is_labelled_a_projection_with_a_column_per_machine() -> None:
    kept = capacity_figures(MEASURED, Projected().machines(run_partitions=6),
                            Measured(2, 6, 6000.0))
    out = io.StringIO()
    Console(file=out, width=160).print(capacity_table(kept))
    text = out.getvalue()
    for fragment in ("capacity projection", "not measured", "CPU s/1k (measured)", "0.060",
                     "16,667", "min(N, C)", "min(M, C)", "min(W, C)", "N = 6 partitions",
                     "a send worker per core", "2 cores, 1 primary", "32 cores, 3 primaries",
                     "8,000", "32,000", "60,000", "saturates first", "all cores", "redis",
                     "This run: 6,000 payments/s at saturation on 2 cores kept 1.5 cores busy"):
        assert fragment in text, fragment
    assert "…" not in text  # no cell cut short
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert rows["8 cores, 1 primary"].rstrip("│ ").endswith("redis")
    assert rows["8 cores, 3 primaries"].rstrip("│ ").endswith("all cores")


def test_a_saved_file_s_names_are_printed_literally() -> None:
    kept = capacity_figures({"[red]x\x1b": 0.5}, [Machine(2, 6, 1)], Measured(2, 6, 100.0))
    out = io.StringIO()
    Console(file=out, width=160).print(capacity_table(kept))
    assert out.getvalue().count("[red]x\\x1b") == 2  # its column and what saturates first

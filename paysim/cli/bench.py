"""`paysim bench` (what bench/run calls): Kafka's perf tools, then paysim, on a private stack."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from paysim.bench import DEFAULT_PROCESSORS
from paysim.bench.capacity import Projected, Scaling
from paysim.cli.options import FiniteFloatRange
from paysim.cli.render import console, err_console, safe
from paysim.infra.collector import tune_for_batches
from paysim.infra.config import OPTIONS_BY_KEY
from paysim.infra.errors import ConfigError, PaysimError
from paysim.infra.files import writing
from paysim.load.schedule import MAX_RATE, parse_duration


def _duration(text: str | None, flag: str = "--duration") -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"{flag}: expected a duration such as 60s or 2m, got {text!r}")
    return seconds


@click.command()
@click.option("--quick", is_flag=True,
              help="A short version: 20,000 payments and 10 s per rate (about a minute).")
@click.option("--count", type=click.IntRange(1000, 10_000_000),
              help="Payments at saturation, and records for Kafka's perf tools. "
              "[default: 200,000; --quick 20,000]")
@click.option("--rate", "rates", type=FiniteFloatRange(1, MAX_RATE), multiple=True,
              help="An open-model rate per second (repeatable). [default: 1000 2000 5000]")
@click.option("--duration", help="How long each rate runs. [default: 60s; --quick 10s]")
@click.option("--http-duration", help="How long wrk loads POST /authorize. "
              "[default: 30s; --quick 10s]")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the payments.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench/results.json"), show_default=True,
              help="Where to write the results as JSON.")
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="Serve Prometheus metrics from the services and the generator (the cost "
              "of metrics is the difference between the two).")
@click.option("--project-cores", type=click.IntRange(1, 4096), multiple=True,
              help="Cores of a machine the capacity model projects (repeatable). "
              "[default: 2 8 32]")
@click.option("--project-partitions", type=click.IntRange(1, 10_000),
              help="Partitions per topic in the projection. [default: topics.partitions' "
              "default, 6]")
@click.option("--project-primaries", type=click.IntRange(1, 1000), multiple=True,
              help="Redis primaries in the projection (repeatable). [default: 1 3]")
@click.option("--project-workers", type=click.IntRange(1, 4096),
              help="`send --workers` in the projection. [default: one per core]")
@click.option("--project-from", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run nothing: print the capacity projection of a saved results.json (for "
              "other --project-* figures).")
@click.option("--trace-ratio", type=FiniteFloatRange(0, 1),
              help="Trace this share of the payments (0.1: one in ten) in the generator and "
              "the services, exported over OTLP/HTTP to a receiver on 127.0.0.1 that counts "
              "the spans (the cost of tracing is the difference to a run without). "
              "[default: no tracing]")
@click.option("--processors", type=click.IntRange(1, 16), default=DEFAULT_PROCESSORS,
              show_default=True,
              help="Processor instances sharing its partitions, as `run-all --processors` "
              "starts them (their CPU and memory are summed in the table).")
@click.option("--partitions", type=click.IntRange(1, 1000),
              help="Partitions per topic on the benchmark's stack (Kafka's perf tools use "
              "the same). [default: one per processor]")
def bench(quick: bool, count: int | None, rates: tuple[float, ...], duration: str | None,
          http_duration: str | None, seed: int, out: Path, metrics: bool,
          trace_ratio: float | None, project_cores: tuple[int, ...],
          project_partitions: int | None, project_primaries: tuple[int, ...],
          project_workers: int | None, project_from: Path | None, processors: int,
          partitions: int | None) -> None:
    """Benchmark paysim against Kafka's own perf tools on a private local stack.

    Starts a fresh broker and redis-server of its own (free ports, a temporary folder), runs
    Kafka's producer and consumer perf tools with paysim-sized records, then paysim end to end
    at saturation, then open-model runs at fixed rates, then wrk against the HTTP API's
    POST /authorize; samples each process's memory and CPU. Prints the measured table, then a
    capacity projection from the CPU each process spent, and writes the results as JSON."""
    # The projection is of paysim as deployed by default on larger machines, whatever the
    # partitions the benchmark's own stack was sized with.
    default_partitions = OPTIONS_BY_KEY["topics.partitions"].default()
    projected = Projected(cores=project_cores or Projected.cores,
                          partitions=project_partitions or default_partitions,
                          primaries=project_primaries or Projected.primaries,
                          workers=project_workers)
    if project_from is not None:
        _print_projection(project_from, projected, default_partitions)
        return
    # Imported here: the benchmark's modules would add 0.13 s to every other command's start.
    from paysim.bench.session import BenchOptions, run_benchmark

    options = BenchOptions.quick_run() if quick else BenchOptions()
    options = replace(options, seed=seed, count=count or options.count,
                      rates=rates or options.rates,
                      duration_s=_duration(duration) or options.duration_s, metrics=metrics,
                      http_duration_s=_duration(http_duration, "--http-duration")
                      or options.http_duration_s, trace_ratio=trace_ratio,
                      projected=projected, processors=processors, partitions=partitions)
    # Checked before the benchmark's minutes, not after them.
    with writing("the results", out):
        out.parent.mkdir(parents=True, exist_ok=True)
    tune_for_batches()  # this process is the benchmark's generator
    signal.signal(signal.SIGTERM, _terminated)
    results = run_benchmark(options, announce=lambda line: err_console.print(safe(line)))
    with writing("the results", out):
        out.write_text(json.dumps(results, indent=2) + "\n")
    # Wide enough for the table's rows on one line each, also when piped to a file.
    wide = Console(highlight=False, emoji=False, width=max(console.width, 160))
    wide.print(results_table(results))
    if results["capacity"]:
        wide.print(capacity_table(results["capacity"]))
    console.print(f"results written to {safe(out)}")


class Terminated(PaysimError):
    exit_code = 128 + signal.SIGTERM


def _terminated(signum: int, frame: object) -> None:
    # Raised where the benchmark stands, so that its stack and services are stopped on the
    # way out (Python's default for SIGTERM ends the process with no cleanup at all, and left
    # a broker and a redis-server running).
    raise Terminated("terminated (SIGTERM): the benchmark's stack and services were stopped")


def _print_projection(saved: Path, projected: Projected, default_partitions: int) -> None:
    """`bench --project-from`: a saved run's projection, for other machines."""
    from paysim.bench.results import reprojected

    try:
        data = saved.read_bytes()
    except OSError as error:
        raise ConfigError(f"--project-from: cannot read {saved}: {error.strerror}") from None
    try:
        # A file from before the model has no partitions: paysim's default then.
        capacity = reprojected(data, projected, default_partitions)
    except ValueError as error:
        raise ConfigError(f"--project-from {saved}: {error}") from None
    Console(highlight=False, emoji=False, width=max(console.width, 160)).print(
        capacity_table(capacity))


def _ms(block: dict[str, float]) -> str:
    """p50 / p99 / p99.9 of a latency block, "-" for one not measured."""
    return " / ".join(f"{block[key]:,.1f}" if key in block else "-"
                      for key in ("p50_ms", "p99_ms", "p99_9_ms"))


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def results_table(results: dict[str, Any]) -> Table:
    """The table of measured figures bench/run prints."""
    from paysim.bench.results import CPU_TARGET, RATIO_TARGET, open_model_target
    title = "paysim benchmark" + (" (--quick: smaller than the targets ask)"
                                  if results["quick"] else "")
    table = Table(title=title)
    for column in ("phase", "measure", "figure", "target"):
        table.add_column(column, no_wrap=True)
    ref = results["reference"]
    producer, consumer = ref["producer"], ref["consumer"]
    table.add_row("Kafka producer perf tool",
                  f"msgs/s ({ref['records']:,} x {ref['record_bytes']} B, acks=all)",
                  f"{producer['records_per_s']:,.0f} ({producer['mb_per_s']:.1f} MB/s)", "")
    cold = ref.get("producer_cold")  # runs saved before it was measured have none
    if cold is not None:
        table.add_row("", "msgs/s, first run (the broker's JIT cold; not the reference)",
                      f"{cold['records_per_s']:,.0f}", "")
    table.add_row("Kafka consumer perf tool", "msgs/s",
                  f"{consumer['records_per_s']:,.0f} ({consumer['mb_per_s']:.1f} MB/s)", "",
                  end_section=True)
    burst = results["saturation"]
    verdicts = {t["name"]: t for t in results["targets"]}
    table.add_row("paysim at saturation",
                  f"payments/s, exactly-once ({burst['completed']:,} done, "
                  f"{burst['lost']} lost)",
                  f"{burst['throughput_per_s']:,.0f}", _verdict(results["targets"][0]))
    ratio = verdicts.get(RATIO_TARGET)
    table.add_row("", "ratio to Kafka's producer tool",
                  f"{burst['ratio_to_kafka_producer']:.3f}", _verdict(ratio) if ratio else "")
    table.add_row("", "end to end p50/p99/p99.9 ms", _ms(burst["latency"]["end_to_end"]),
                  "", end_section=True)
    mix = results.get("lifecycle")
    if mix:
        table.add_row("lifecycle mix",
                      f"payments/s ({mix['completed']:,} done, {mix['operations']:,} ops, "
                      f"{mix['lost'] + mix['operations_lost']} lost)",
                      f"{mix['throughput_per_s']:,.0f}", "")
        table.add_row("", "payments + operations answered/s", f"{mix['messages_per_s']:,.0f}",
                      "")
        table.add_row("", "end to end p50/p99/p99.9 ms", _ms(mix["latency"]["end_to_end"]),
                      "")
        for name, block in mix["latency"].items():
            if name.startswith("op_"):
                table.add_row("", f"{name[3:]} p50/p99/p99.9 ms", _ms(block), "")
        table.add_section()
    for phase in results["open_model"]:
        rate = phase["target_rate"]
        name = open_model_target(rate)
        table.add_row(f"open model {rate:,.0f}/s",
                      f"achieved/s ({phase['lost']} lost, {phase['dropped']} dropped)",
                      f"{phase['achieved_rate']:,.1f}", "")
        for stage, block in phase["latency"].items():
            verdict = _verdict(verdicts[name]) if stage == "end_to_end" and name in verdicts \
                else ""
            table.add_row("", f"{stage.replace('_', ' ')} p50/p99/p99.9 ms", _ms(block),
                          verdict)
        table.add_section()
    edge = results.get("http")
    if edge:
        verdict = next((t for t in results["targets"] if t["name"].startswith("HTTP API")), None)
        table.add_row("HTTP POST /authorize",
                      f"requests/s (wrk, {edge['connections']} connections, "
                      f"{edge['failed']:,} failed)",
                      f"{edge['requests_per_s']:,.0f}", _verdict(verdict) if verdict else "")
        table.add_row("", "p50/p99/p99.9 ms", _ms(edge["latency"]), "")
        caught_up = edge["caught_up_s"]
        table.add_row("", "pipeline kept up: outcomes / accepted",
                      f"{'yes' if edge['kept_up'] else 'NO'}: {edge['outcomes']:,} / "
                      f"{edge['accepted']:,} "
                      + (f"in {caught_up:g} s" if caught_up is not None else "after 60 s"),
                      "", end_section=True)
    traces = results.get("tracing")
    if traces:
        table.add_row("tracing", f"sampled {traces['sample_ratio']:g} of payments; spans "
                      "received (exports)", f"{traces['spans']:,} ({traces['exports']:,})", "",
                      end_section=True)
    for name, figures in results["resources"].items():
        growth = next((t for t in results["targets"] if t["name"].startswith(f"{name} RSS")),
                      None)
        table.add_row(name, "RSS MiB idle; 1st -> last tenth; CPU s/1k",
                      f"{_mib(figures.get('rss_at_start_mib'))}; "
                      f"{_mib(figures['rss_first_tenth_mib'])} -> "
                      f"{_mib(figures['rss_last_tenth_mib'])} "
                      f"({figures['rss_growth_pct']:+.1f}%); {figures['cpu_s_per_1000']:.3f}",
                      _verdict(growth) if growth else "")
    cost = verdicts.get(CPU_TARGET)
    if cost:
        table.add_row("every process", "CPU µs per payment, summed", cost["actual"],
                      _verdict(cost))
    return table


def capacity_table(capacity: dict[str, Any]) -> Table:
    """The capacity model's projection (bench/capacity.py): the measured inputs, then one row
    per machine with each component's ceiling, what the cores allow, and what saturates
    first."""
    machines = capacity["machines"]
    names = [component["name"] for component in capacity["components"]]
    first = machines[0]
    workers = f"{first['workers']} send workers" if first["workers"] else "a send worker per core"
    measured = capacity["measured"]
    table = Table(title=f"capacity projection: {capacity['basis']}",
                  caption=f"C cores, N = {first['partitions']} partitions per topic, M Redis "
                  f"primaries, W = {workers}; payments/s each component sustains on the cores "
                  "it can use; all cores: no component's own limit comes first.\n"
                  f"This run: {measured['payments_per_s']:,.0f} payments/s at saturation on "
                  f"{measured['cores'] or '?'} cores kept {measured['cores_busy']:g} cores busy "
                  "by these figures (the projection counts every core as paysim's).",
                  caption_justify="left")
    table.add_column("", no_wrap=True)
    # Names are a saved file's keys with --project-from: printed literally.
    for name in (*map(safe, names), "cores allow", "projected", "saturates first"):
        table.add_column(name, justify="right", no_wrap=True)
    by_name = {component["name"]: component for component in capacity["components"]}
    table.add_row("CPU s/1k (measured)",
                  *(f"{by_name[name]['cpu_s_per_1000']:.3f}" for name in names), "", "", "")
    table.add_row("payments/s per core",
                  *(_rate(by_name[name]["per_core_per_s"]) for name in names), "", "", "")
    table.add_row("cores it can use", *(USABLE[Scaling(by_name[name]["scaling"])]
                                        for name in names), "C / CPU", "lowest", "",
                  end_section=True)
    for machine in machines:
        primaries = machine["primaries"]
        table.add_row(f"{machine['cores']} cores, {primaries} "
                      f"{'primary' if primaries == 1 else 'primaries'}",
                      *(_rate(machine["components"][name]["ceiling_per_s"]) for name in names),
                      _rate(machine["shared_per_s"]), _rate(machine["projected_per_s"]),
                      safe(machine["bottleneck"]))
    return table


# What limits the cores each kind of component keeps busy, in the caption's letters.
USABLE = {Scaling.PARTITIONS: "min(N, C)", Scaling.PRIMARIES: "min(M, C)", Scaling.ANY: "C",
          Scaling.WORKERS: "min(W, C)"}


def _rate(value: float | None) -> str:
    return "no limit" if value is None else f"{value:,.0f}"


def _verdict(target: dict[str, Any]) -> str:
    if target.get("unjudged"):  # why is in results.json; the table's title says it is small
        return f"{target['bound']}: not judged"
    return f"{target['bound']}: {'met' if target['met'] else 'MISSED'}"

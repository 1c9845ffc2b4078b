"""`paysim bench` (what bench/run calls): Kafka's perf tools, then paysim, on a private stack."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from paysim.cli.render import console, err_console
from paysim.infra.errors import ConfigError
from paysim.load.schedule import parse_duration


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"--duration: expected a duration such as 60s or 2m, got {text!r}")
    return seconds


@click.command()
@click.option("--quick", is_flag=True,
              help="A short version: 20,000 payments and 10 s per rate (about a minute).")
@click.option("--count", type=click.IntRange(1000, 10_000_000),
              help="Payments at saturation, and records for Kafka's perf tools. "
              "[default: 200,000; --quick 20,000]")
@click.option("--rate", "rates", type=click.FloatRange(1, 1_000_000), multiple=True,
              help="An open-model rate per second (repeatable). [default: 1000 2000 5000]")
@click.option("--duration", help="How long each rate runs. [default: 60s; --quick 10s]")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the payments.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench/results.json"), show_default=True,
              help="Where to write the results as JSON.")
def bench(quick: bool, count: int | None, rates: tuple[float, ...], duration: str | None,
          seed: int, out: Path) -> None:
    """Benchmark paysim against Kafka's own perf tools on a private local stack.

    Starts a fresh broker and redis-server of its own (free ports, a temporary folder), runs
    Kafka's producer and consumer perf tools with paysim-sized records, then paysim end to end
    at saturation, then open-model runs at fixed rates; samples each process's memory and
    CPU. Prints one table and writes the results as JSON."""
    # Imported here: the benchmark's modules would add 0.13 s to every other command's start.
    from paysim.bench.results import results_table
    from paysim.bench.session import BenchOptions, run_benchmark

    options = BenchOptions.quick_run() if quick else BenchOptions()
    options = replace(options, seed=seed, count=count or options.count,
                      rates=rates or options.rates,
                      duration_s=_duration(duration) or options.duration_s)
    results = run_benchmark(options, announce=lambda line: err_console.print(line))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    # Wide enough for the table's rows on one line each, also when piped to a file.
    Console(highlight=False, width=max(console.width, 140)).print(results_table(results))
    console.print(f"results written to {out}")

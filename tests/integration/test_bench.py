"""bench/run's core, small: a private stack, Kafka's perf tools, paysim at saturation and at a
fixed rate, every figure filled in, and the private stack gone afterwards."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from paysim.bench.capacity import CORES
from paysim.bench.resources import rss_bytes
from paysim.bench.session import BenchOptions, run_benchmark
from paysim.cli.bench import capacity_table, results_table
from paysim.infra.waiting import wait_until


def test_a_small_benchmark_fills_in_every_figure() -> None:
    lines: list[str] = []
    results = run_benchmark(BenchOptions(count=3000, rates=(300.0,), duration_s=3.0, seed=11,
                                         http_duration_s=2.0, warm_up_open_s=1.0,
                                         warm_up_most_s=1.0),
                            announce=lines.append)
    assert ("warm-up: 3,000 payments as fast as they go, then 2,000/s for 1 s, and on until the "
            "broker's JIT settles (at most 1 s; not measured)") in lines, lines
    warm_up = results["warm_up"]
    assert warm_up["payments"] == 3000 and warm_up["open_model_s"] == 1.0
    # A broker just started compiles its request paths through the warm-up's first second:
    # its JIT threads were read, and they had not settled.
    assert warm_up["compiler_s"] > 0 and warm_up["jit_settled"] is False, warm_up
    assert any(line.startswith("  2,000/s ran 1 s: the broker's JIT compiler threads took ")
               for line in lines), lines
    assert results["saturation"]["broker_compiler_s"] >= 0

    assert results["metrics"] is True  # the services and the generator served metrics
    reference = results["reference"]
    assert reference["records"] == 3000 and reference["record_bytes"] > 300
    assert reference["producer"]["records"] == reference["producer_cold"]["records"] == 3000
    assert reference["producer"]["records_per_s"] > 0
    assert reference["producer_cold"]["records_per_s"] > 0
    assert reference["consumer"]["records_per_s"] > 0

    burst = results["saturation"]
    assert burst["sent"] == burst["completed"] == 3000 and burst["lost"] == 0
    assert burst["throughput_per_s"] > 0 and burst["ratio_to_kafka_producer"] > 0
    assert set(burst["latency"]) == {"end_to_end", "authorizer", "processor", "notifier"}

    mix = results["lifecycle"]  # a quarter of the count, at least 1,000
    assert mix["sent"] == mix["completed"] == 1000 and mix["lost"] == 0
    assert mix["operations"] > 300 and mix["operations_lost"] == 0
    assert mix["messages_per_s"] > mix["throughput_per_s"] > 0
    assert "op_capture" in mix["latency"] and "op_refund" in mix["latency"]

    [fixed] = results["open_model"]
    assert fixed["target_rate"] == 300.0 and fixed["sent"] == 900 and fixed["lost"] == 0
    assert 250 < fixed["achieved_rate"] < 350

    for name in ("authorizer", "processor", "notifier", "broker", "redis", "generator"):
        figures = results["resources"][name]
        assert figures["rss_start_mib"] > 1 and figures["cpu_s"] > 0, name
        # The private stack and its services are stopped at the end.
        if name != "generator":
            assert rss_bytes(figures["pid"]) is None, name

    edge = results["http"]  # wrk against POST /authorize: figures, and every outcome back
    assert edge["connections"] == 32 and 1.5 < edge["duration_s"] < 4
    assert edge["requests"] == edge["accepted"] > 0 and edge["failed"] == 0
    assert edge["requests_per_s"] > 0
    assert 0 < edge["latency"]["p50_ms"] <= edge["latency"]["p99_ms"]
    assert edge["outcomes"] >= edge["accepted"] and edge["caught_up_s"] is not None

    assert {t["name"].split(",")[0] for t in results["targets"]} >= {"end to end"}

    capacity = results["capacity"]  # projected from the saturation run's CPU per payment
    names = [c["name"] for c in capacity["components"]]
    assert set(names) >= {"authorizer", "processor", "notifier", "broker", "redis", "generator"}
    assert [(m["cores"], m["primaries"]) for m in capacity["machines"]] == [
        (2, 1), (8, 1), (32, 1), (2, 3), (8, 3), (32, 3)]
    for machine in capacity["machines"]:
        assert machine["bottleneck"] in (*names, CORES)
        assert 0 < machine["projected_per_s"] <= machine["shared_per_s"]
    assert capacity["machines"][2]["projected_per_s"] >= capacity["machines"][0]["projected_per_s"]
    json.dumps(results)  # what bench/results.json holds
    out = io.StringIO()
    Console(file=out, width=160).print(results_table(results))
    assert "paysim at saturation" in out.getvalue()
    assert "lifecycle mix" in out.getvalue()
    assert "HTTP POST /authorize" in out.getvalue()
    Console(file=out, width=160).print(capacity_table(capacity))
    assert "capacity projection: projected from this run's CPU" in out.getvalue()
    assert any(line.startswith("saturation: 3,000 payments") for line in lines)


def processes_under(folder: Path) -> list[int]:
    """Processes started with TMPDIR at ``folder``: the benchmark and whatever it started (the
    broker, redis-server and the services inherit its environment)."""
    marker = b"TMPDIR=" + str(folder).encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes() + b"\0"
        except OSError:
            continue  # gone meanwhile
        if marker in environment:
            found.append(int(entry.name))
    return found


def test_a_terminated_benchmark_stops_its_stack_and_says_so(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = tmp_path / "bench.log"
    with log.open("wb") as out:
        bench = subprocess.Popen(
            [sys.executable, "-m", "paysim", "bench", "--quick", "--count", "200000",
             "--out", str(tmp_path / "results.json")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        # Its stack is up and the warm-up under way: the broker, redis and services run.
        assert wait_until(lambda: b"warm-up" in log.read_bytes(), timeout=180), \
            log.read_text()
        # The benchmark, the broker, redis-server, the supervisor and its services.
        assert len(processes_under(scratch)) >= 6, processes_under(scratch)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(120) == 143
    finally:
        if bench.poll() is None:
            bench.kill()
    try:
        assert wait_until(lambda: processes_under(scratch) == [], timeout=30), \
            processes_under(scratch)
    finally:
        for pid in processes_under(scratch):  # what a failed stop left: not the next test's
            os.kill(pid, signal.SIGKILL)
    last = log.read_text().strip().splitlines()[-1]
    assert last == "paysim: error: terminated (SIGTERM): the benchmark's stack and services were " \
        "stopped", last
    assert "Traceback" not in log.read_text()
    assert list(scratch.iterdir()) == []  # the temporary folder is gone too

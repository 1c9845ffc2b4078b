"""Kafka's own perf tools against paysim's broker: the reference figure for bench/run.

ProducerPerformance and ConsumerPerformance come from the kafka-tools jar in the broker's jar
cache and run on the java that runs the broker. Only the bootstrap servers are passed on: the
pass-through client properties use librdkafka's names, which the Java clients do not share.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.topics import ensure_topics
from paysim.stack.jars import ensure_kafka_jars
from paysim.stack.logs import tail_lines
from paysim.stack.prerequisites import find_java, raise_if_missing

PRODUCER_TOOL = "org.apache.kafka.tools.ProducerPerformance"
CONSUMER_TOOL = "org.apache.kafka.tools.ConsumerPerformance"
# How long the consumer tool waits for a record before giving up (its default, 10 s, ran out
# while joining its group on a machine busy with other work).
CONSUMER_IDLE_MS = 60_000
TOOL_TIMEOUT_S = 300.0
# The tools format numbers in the JVM's default locale; pinned so 75075.1 never reads 75075,1.
JVM_OPTIONS = ("-Xmx512m", "-Duser.language=en", "-Duser.country=US")

# A number as Java's %d / %.Nf print it, NaN and Infinity included (a run of 0 ms divides by 0).
_NUM = r"(-?\d+(?:\.\d+)?|NaN|-?Infinity)"
_PRODUCER_SUMMARY = re.compile(
    rf"(\d+) records sent, {_NUM} records/sec \({_NUM} MB/sec\), {_NUM} ms avg latency, "
    rf"{_NUM} ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99\.9th"
)
_CONSUMER_HEADER = "start.time"


@dataclass(frozen=True)
class ProducerFigures:
    """ProducerPerformance's final summary line."""

    records: int
    records_per_s: float
    mb_per_s: float
    avg_latency_ms: float
    max_latency_ms: float
    p50_ms: int
    p95_ms: int
    p99_ms: int
    p999_ms: int


@dataclass(frozen=True)
class ConsumerFigures:
    """ConsumerPerformance's summary; the fetch figures leave out joining the group, and are
    None when the tool does not print them."""

    records: int
    mb: float
    records_per_s: float
    mb_per_s: float
    fetch_records_per_s: float | None
    fetch_mb_per_s: float | None
    fetch_time_ms: float | None
    rebalance_time_ms: float | None


def parse_producer_output(stdout: str) -> ProducerFigures:
    """The figures of the last summary line (the 5-second progress lines have no percentiles)."""
    matches = [m for line in stdout.splitlines() if (m := _PRODUCER_SUMMARY.match(line.strip()))]
    if not matches:
        raise PaysimError(f"ProducerPerformance printed no summary line: {last_line(stdout)}")
    g = matches[-1].groups()
    return ProducerFigures(
        records=int(g[0]), records_per_s=float(g[1]), mb_per_s=float(g[2]),
        avg_latency_ms=float(g[3]), max_latency_ms=float(g[4]),
        p50_ms=int(g[5]), p95_ms=int(g[6]), p99_ms=int(g[7]), p999_ms=int(g[8]),
    )


def parse_consumer_output(stdout: str) -> ConsumerFigures:
    """The figures of the data line under the CSV header (a WARNING line may come between)."""
    lines = [line.strip() for line in stdout.splitlines()]
    header = next((i for i, line in enumerate(lines) if line.startswith(_CONSUMER_HEADER)), None)
    if header is None:
        raise PaysimError(f"ConsumerPerformance printed no summary: {last_line(stdout)}")
    names = [name.strip() for name in lines[header].split(",")]
    data = next((line for line in lines[header + 1:]
                 if line.count(",") == len(names) - 1 and not line.startswith("WARNING")), None)
    if data is None:
        raise PaysimError(f"ConsumerPerformance printed a header but no figures: "
                          f"{last_line(stdout)}")
    row = dict(zip(names, (value.strip() for value in data.split(",")), strict=True))

    def number(name: str) -> float | None:
        return float(row[name]) if name in row else None

    try:
        return ConsumerFigures(
            records=int(row["data.consumed.in.nMsg"]), mb=float(row["data.consumed.in.MB"]),
            records_per_s=float(row["nMsg.sec"]), mb_per_s=float(row["MB.sec"]),
            fetch_records_per_s=number("fetch.nMsg.sec"), fetch_mb_per_s=number("fetch.MB.sec"),
            fetch_time_ms=number("fetch.time.ms"), rebalance_time_ms=number("rebalance.time.ms"),
        )
    except KeyError as exc:
        raise PaysimError(f"ConsumerPerformance printed no {exc.args[0]} column: "
                          f"{lines[header]}") from None
    except ValueError:
        raise PaysimError(f"ConsumerPerformance printed figures paysim cannot read: "
                          f"{data}") from None


def last_line(text: str) -> str:
    """The last line that says something: blank lines and Java stack frames are skipped."""
    for line in reversed(text.splitlines()):
        stripped = line.strip()
        if stripped and not stripped.startswith(("at ", "... ")):
            return stripped
    return "(no output)"


def producer_command(java: str, libs: Path, topic: str, num_records: int, payload_file: Path,
                     producer_props: Mapping[str, str]) -> list[str]:
    props = [f"{key}={value}" for key, value in producer_props.items()]
    return [java, *JVM_OPTIONS, "-cp", f"{libs}/*", PRODUCER_TOOL, "--topic", topic,
            "--num-records", str(num_records), "--throughput", "-1",
            "--payload-file", str(payload_file), "--producer-props", *props]


def consumer_command(java: str, libs: Path, bootstrap: str, topic: str,
                     num_records: int) -> list[str]:
    return [java, *JVM_OPTIONS, "-cp", f"{libs}/*", CONSUMER_TOOL, "--bootstrap-server",
            bootstrap, "--topic", topic, "--messages", str(num_records),
            "--timeout", str(CONSUMER_IDLE_MS)]


def run_producer_perf(settings: Settings, topic: str, payloads: list[bytes], num_records: int,
                      producer_props: Mapping[str, str], *, timeout_s: float = TOOL_TIMEOUT_S,
                      announce: Callable[[str], object] = print) -> ProducerFigures:
    """Send ``num_records`` records, each picked at random from ``payloads``, to ``topic``
    (created with paysim's partitions when missing), unthrottled."""
    if not payloads:
        raise ValueError("no payloads to send")
    for payload in payloads:
        # The tool splits its payload file on newlines and reads it as UTF-8 text.
        if not payload or b"\n" in payload or not _is_utf8(payload):
            raise ValueError(f"a payload must be one non-empty line of UTF-8: {payload[:80]!r}")
    java, libs = _java_and_libs(settings, announce)
    ensure_topics(settings, names=[topic])
    with tempfile.TemporaryDirectory(prefix="paysim-reference-") as scratch:
        payload_file = Path(scratch) / "payloads.txt"
        payload_file.write_bytes(b"\n".join(payloads))
        # bootstrap.servers last: the broker under test is paysim's, whatever the props say.
        props = {**producer_props, "bootstrap.servers": settings.kafka_bootstrap}
        command = producer_command(java, libs, topic, num_records, payload_file, props)
        stdout, stderr = _run_tool("ProducerPerformance", command, Path(scratch), timeout_s)
    figures = parse_producer_output(stdout)
    # Failed sends are printed to stderr and left out of the count; the tool still exits 0.
    if figures.records != num_records:
        raise PaysimError(f"ProducerPerformance sent {figures.records} of {num_records} records "
                          f"to {topic}: {last_line(stderr)}")
    return figures


def run_consumer_perf(settings: Settings, topic: str, num_records: int, *,
                      timeout_s: float = TOOL_TIMEOUT_S,
                      announce: Callable[[str], object] = print) -> ConsumerFigures:
    """Read ``num_records`` records of ``topic`` from the start, in a new consumer group."""
    java, libs = _java_and_libs(settings, announce)
    command = consumer_command(java, libs, settings.kafka_bootstrap, topic, num_records)
    with tempfile.TemporaryDirectory(prefix="paysim-reference-") as scratch:
        stdout, stderr = _run_tool("ConsumerPerformance", command, Path(scratch), timeout_s)
    figures = parse_consumer_output(stdout)
    # Short of records it gives up after CONSUMER_IDLE_MS without one, prints a WARNING and
    # exits 0.
    if figures.records != num_records:
        said = next((line.strip() for line in stdout.splitlines() if line.startswith("WARNING")),
                    last_line(stderr))
        raise PaysimError(f"ConsumerPerformance read {figures.records} of {num_records} records "
                          f"from {topic}: {said}")
    return figures


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _java_and_libs(settings: Settings, announce: Callable[[str], object]) -> tuple[str, Path]:
    java, missing = find_java()
    raise_if_missing([missing] if missing else [])
    assert java is not None
    return java, ensure_kafka_jars(settings.stack.cache_dir, announce)


def _run_tool(tool: str, command: list[str], scratch: Path, timeout_s: float) -> tuple[str, str]:
    """Run a tool to the end; its stdout and stderr. Both go to files: a tool failing every send
    prints an error per record."""
    out_path, err_path = scratch / "stdout", scratch / "stderr"
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            result = subprocess.run(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        said = last_line("\n".join(tail_lines(err_path)))
        raise PaysimError(f"{tool} did not finish in {timeout_s:.0f} s: {said}") from None
    stdout = out_path.read_text(errors="replace")
    stderr = "\n".join(tail_lines(err_path, count=50))
    if result.returncode != 0:
        raise PaysimError(f"{tool} failed (exit {result.returncode}): "
                          f"{last_line(stderr or stdout)}")
    return stdout, stderr

"""Reading the output of Kafka's perf tools; tools that fail say so in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from paysim.bench import reference
from paysim.bench.reference import (
    ConsumerFigures,
    ProducerFigures,
    last_line,
    parse_consumer_output,
    parse_producer_output,
)
from paysim.infra.errors import PaysimError
from tests.helpers import settings_for

# Captured from the Kafka 4.1.1 tools against a local broker (OpenJDK 17).
PRODUCER_OUTPUT = """\
Reading payloads from: /tmp/ref-work/payloads.txt
Number of messages read: 1000
200000 records sent, 75075.1 records/sec (31.97 MB/sec), 648.85 ms avg latency, 856.00 ms max \
latency, 669 ms 50th, 802 ms 95th, 824 ms 99th, 851 ms 99.9th.
"""
# A longer run (--throughput 50000): a 5-second progress line first, without percentiles.
PRODUCER_OUTPUT_WITH_PROGRESS = """\
Reading payloads from: /tmp/ref-work/payloads.txt
Number of messages read: 1000
157817 records sent, 31557.1 records/sec (13.44 MB/sec), 1013.0 ms avg latency, 2025.0 ms max \
latency.
300000 records sent, 44372.1 records/sec (18.89 MB/sec), 1054.70 ms avg latency, 2025.00 ms max \
latency, 1045 ms 50th, 1861 ms 95th, 1991 ms 99th, 2007 ms 99.9th.
"""
# Every send failed (a topic that does not exist, max.block.ms=1000): stdout, then stderr.
PRODUCER_OUTPUT_ALL_FAILED = """\
Reading payloads from: /tmp/ref-work/payloads.txt
Number of messages read: 1000
0 records sent, 0.0 records/sec (0.00 MB/sec), NaN ms avg latency, 0.00 ms max latency, 0 ms \
50th, 0 ms 95th, 0 ms 99th, 0 ms 99.9th.
"""
PRODUCER_STDERR_ALL_FAILED = """\
org.apache.kafka.common.errors.TimeoutException: Topic nosuch not present in metadata after 1000 ms.
Caused by: org.apache.kafka.common.errors.UnknownTopicOrPartitionException: This server does \
not host this topic-partition.
"""
CONSUMER_HEADER = ("start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, "
                   "nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec")
CONSUMER_OUTPUT = f"""\
{CONSUMER_HEADER}
2026-11-25 02:04:57:481, 2026-11-25 02:04:58:815, 85.1576, 63.8362, 200000, 149925.0375, 707, \
627, 135.8175, 318979.2663
"""
# Asked for more records than the topic held (--timeout 2000).
CONSUMER_WARNING = ("WARNING: Exiting before consuming the expected number of messages: timeout "
                    "(2000 ms) exceeded. You can use the --timeout option to increase the timeout.")
CONSUMER_OUTPUT_SHORT = f"""\
{CONSUMER_HEADER}
{CONSUMER_WARNING}
2026-11-25 02:05:06:214, 2026-11-25 02:05:09:076, 85.1576, 29.7546, 200000, 69881.2020, 239, \
2623, 32.4657, 76248.5703
"""
JAVA_FAILURE = """\
Exception in thread "main" org.apache.kafka.common.config.ConfigException: Invalid value bogus \
for configuration acks: String must be one of: all, -1, 0, 1
\tat org.apache.kafka.common.config.ConfigDef$ValidString.ensureValid(ConfigDef.java:1009)
\tat org.apache.kafka.clients.producer.ProducerConfig.<init>(ProducerConfig.java:621)
\t... 3 more
"""


def test_the_producer_summary_line_is_read() -> None:
    assert parse_producer_output(PRODUCER_OUTPUT) == ProducerFigures(
        records=200000, records_per_s=75075.1, mb_per_s=31.97, avg_latency_ms=648.85,
        max_latency_ms=856.0, p50_ms=669, p95_ms=802, p99_ms=824, p999_ms=851)


def test_a_progress_line_is_not_taken_for_the_summary() -> None:
    figures = parse_producer_output(PRODUCER_OUTPUT_WITH_PROGRESS)
    assert (figures.records, figures.records_per_s, figures.p999_ms) == (300000, 44372.1, 2007)


def test_a_summary_of_nothing_sent_is_read_nan_and_all() -> None:
    figures = parse_producer_output(PRODUCER_OUTPUT_ALL_FAILED)
    assert figures.records == 0
    assert math.isnan(figures.avg_latency_ms)


def test_the_consumer_summary_is_read_fetch_figures_too() -> None:
    assert parse_consumer_output(CONSUMER_OUTPUT) == ConsumerFigures(
        records=200000, mb=85.1576, records_per_s=149925.0375, mb_per_s=63.8362,
        fetch_records_per_s=318979.2663, fetch_mb_per_s=135.8175, fetch_time_ms=627.0,
        rebalance_time_ms=707.0)


def test_the_consumer_warning_line_is_stepped_over() -> None:
    figures = parse_consumer_output(CONSUMER_OUTPUT_SHORT)
    assert (figures.records, figures.records_per_s) == (200000, 69881.202)


def test_a_consumer_summary_without_fetch_columns_leaves_them_none() -> None:
    # Made from the real line with the four rebalance/fetch columns dropped.
    output = ("start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, "
              "nMsg.sec\n2026-11-25 02:04:57:481, 2026-11-25 02:04:58:815, 85.1576, 63.8362, "
              "200000, 149925.0375\n")
    figures = parse_consumer_output(output)
    assert figures.records == 200000
    assert (figures.fetch_records_per_s, figures.fetch_mb_per_s, figures.fetch_time_ms,
            figures.rebalance_time_ms) == (None, None, None, None)


@pytest.mark.parametrize("output", [
    "",
    "Reading payloads from: /tmp/p.txt\nNumber of messages read: 1000\n",
    # A progress line alone is no summary.
    PRODUCER_OUTPUT_WITH_PROGRESS.splitlines()[2] + "\n",
    PRODUCER_OUTPUT.replace("75075.1", "75075,1"),
])
def test_producer_output_without_a_summary_is_an_error(output: str) -> None:
    with pytest.raises(PaysimError, match=r"^ProducerPerformance printed no summary line"):
        parse_producer_output(output)


@pytest.mark.parametrize(("output", "message"), [
    ("", "printed no summary"),
    (CONSUMER_HEADER + "\n", "printed a header but no figures"),
    (CONSUMER_HEADER + "\n" + CONSUMER_WARNING + "\n", "printed a header but no figures"),
    (CONSUMER_OUTPUT.replace("200000", "lots"), "printed figures paysim cannot read: 2026"),
    (CONSUMER_OUTPUT.replace("nMsg.sec,", "records.sec,"), "printed no nMsg.sec column"),
])
def test_consumer_output_without_figures_is_an_error(output: str, message: str) -> None:
    with pytest.raises(PaysimError, match=f"^ConsumerPerformance {message}") as caught:
        parse_consumer_output(output)
    assert "\n" not in str(caught.value)


def test_the_last_line_skips_java_stack_frames() -> None:
    assert last_line(JAVA_FAILURE).startswith("Exception in thread \"main\" org.apache.kafka")
    assert last_line(PRODUCER_STDERR_ALL_FAILED).endswith("does not host this topic-partition.")
    assert last_line("\n  \n") == "(no output)"


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in for java printing the given stdout and stderr and exiting with the code."""
    def install(stdout: str, stderr: str = "", code: int = 0) -> None:
        (tmp_path / "stdout.txt").write_text(stdout)
        (tmp_path / "stderr.txt").write_text(stderr)
        script = tmp_path / "java"
        script.write_text(f"#!/bin/sh\ncat '{tmp_path}/stdout.txt'\n"
                          f"cat '{tmp_path}/stderr.txt' >&2\nexit {code}\n")
        script.chmod(0o755)
        monkeypatch.setattr(reference, "_java_and_libs", lambda *_: (str(script), tmp_path))
        monkeypatch.setattr(reference, "ensure_topics", lambda *_, **__: None)
    return install


@pytest.fixture
def settings(tmp_path: Path):
    return settings_for({"stack.dir": str(tmp_path / "stack")})


def test_the_tools_figures_come_back(fake_tools, settings) -> None:
    fake_tools(PRODUCER_OUTPUT)
    figures = reference.run_producer_perf(settings, "t", [b"{}"], 200000, {"acks": "all"})
    assert figures.records_per_s == 75075.1
    fake_tools(CONSUMER_OUTPUT)
    assert reference.run_consumer_perf(settings, "t", 200000).fetch_records_per_s == 318979.2663


def test_failed_sends_are_an_error_naming_the_last_stderr_line(fake_tools, settings) -> None:
    fake_tools(PRODUCER_OUTPUT_ALL_FAILED, PRODUCER_STDERR_ALL_FAILED)
    with pytest.raises(PaysimError) as caught:
        reference.run_producer_perf(settings, "nosuch", [b"{}"], 1000, {})
    assert str(caught.value) == (
        "ProducerPerformance sent 0 of 1000 records to nosuch: Caused by: org.apache.kafka."
        "common.errors.UnknownTopicOrPartitionException: This server does not host this "
        "topic-partition.")


def test_a_short_read_is_an_error_naming_the_warning(fake_tools, settings) -> None:
    fake_tools(CONSUMER_OUTPUT_SHORT)
    with pytest.raises(PaysimError) as caught:
        reference.run_consumer_perf(settings, "t", 300000)
    assert str(caught.value) == (
        f"ConsumerPerformance read 200000 of 300000 records from t: {CONSUMER_WARNING}")


def test_a_tool_exiting_non_zero_is_one_line_without_the_stack(fake_tools, settings) -> None:
    fake_tools("", JAVA_FAILURE, code=1)
    with pytest.raises(PaysimError) as caught:
        reference.run_producer_perf(settings, "t", [b"{}"], 10, {"acks": "bogus"})
    message = str(caught.value)
    assert message.startswith("ProducerPerformance failed (exit 1): Exception in thread")
    assert "Invalid value bogus for configuration acks" in message
    assert "\n" not in message and "\tat" not in message


def test_a_tool_that_does_not_finish_is_stopped_and_reported(tmp_path: Path) -> None:
    command = ["sh", "-c", "echo stuck >&2; exec sleep 60"]
    with pytest.raises(PaysimError, match=r"^ConsumerPerformance did not finish in 1 s: stuck$"):
        reference._run_tool("ConsumerPerformance", command, tmp_path, 1)


@pytest.mark.parametrize("payloads", [[], [b"{}", b'{"a":\n1}'], [b""], [b"\xff\xfe"]])
def test_payloads_that_are_not_single_utf8_lines_are_refused(payloads, settings) -> None:
    with pytest.raises(ValueError, match="payload"):
        reference.run_producer_perf(settings, "t", payloads, 10, {})


def test_the_commands_are_the_tools_own_options() -> None:
    libs = Path("/cache/libs")
    assert reference.producer_command("java", libs, "t", 5, Path("/p"), {"acks": "all"}) == [
        "java", "-Xmx512m", "-Duser.language=en", "-Duser.country=US", "-cp", "/cache/libs/*",
        "org.apache.kafka.tools.ProducerPerformance", "--topic", "t", "--num-records", "5",
        "--throughput", "-1", "--payload-file", "/p", "--producer-props", "acks=all"]
    assert reference.consumer_command("java", libs, "h:1", "t", 5)[-9:] == [
        "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", "h:1", "--topic",
        "t", "--messages", "5", "--timeout", "60000"]

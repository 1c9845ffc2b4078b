"""The load engine on the real pipeline: open-model rates, thresholds, record and replay.

`paysim send --json` is read back as the typed report (checked against the schema on the way);
one run goes through run_load itself, as the benchmark does."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import threading
from pathlib import Path

import jsonschema
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.secrets import load_keys
from paysim.infra.waiting import wait_until
from paysim.load.generator import PaymentStream, build_population
from paysim.load.ingress import KafkaIngress
from paysim.load.plan import SendRequest
from paysim.load.replay import read_record
from paysim.load.report import RunReport
from paysim.load.report_compare import parse_report
from paysim.load.run import run_load
from paysim.load.runner import Tick
from tests.helpers import settings_for
from tests.integration.pipeline_helpers import (
    injected,
    notified,
    notified_so_far,
    paysim,
    send,
    send_with_fault,
    start_send,
)


def send_report(settings: Settings, *args: str) -> RunReport:
    """`paysim send --json` with ``args``, which must exit 0, as the report it printed."""
    return parse_report(send(settings, *args), "paysim send --json")


def ps_pid(settings: Settings, name: str) -> int:
    rows = json.loads(paysim(settings, "ps", "--json").stdout)["services"]
    return next(row["pid"] for row in rows if row["name"] == name)


def test_a_fixed_rate_sends_rate_times_duration_on_an_even_schedule(
    pipeline: Settings, tmp_path: Path,
) -> None:
    record = tmp_path / "run.jsonl"
    report = send_report(pipeline, "--rate", "100", "--duration", "5s", "--seed", "3",
                         "--record", str(record))

    assert abs(report.load.sent - 500) <= 10  # within 2% of rate x duration
    assert report.load.mode == "open"
    assert report.load.target_rate == 100
    assert report.outcomes.lost == 0
    _, recorded = read_record(record)
    offsets = [offset for _, offset in recorded]
    assert len(offsets) == report.load.sent
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert all(abs(gap - 0.01) < 1e-6 for gap in gaps), "intended times 10 ms apart"


def test_a_paused_processor_shows_in_p99_because_latency_counts_from_intended_time(
    pipeline: Settings,
) -> None:
    processor = ps_pid(pipeline, "processor-0")
    pause_s = 2.0

    def pause() -> None:
        # The fault itself lasts a known time; that is what the run must report.
        os.kill(processor, signal.SIGSTOP)
        try:
            threading.Event().wait(pause_s)
        finally:
            os.kill(processor, signal.SIGCONT)

    # Paused once 100 of the run's 600 payments (100/s for 6 s) were notified: 5 s of sending
    # are left, so ~200 payments are due while the processor sleeps, however long the start.
    result = send_with_fault(pipeline, 100, pause, "--rate", "100", "--duration", "6s",
                             "--seed", "4", "--bad-share", "0", "--test-card-share", "0")
    assert result.returncode == 0, result.stderr
    report = parse_report(json.loads(result.stdout), "paysim send --json")
    e2e = report.latency.end_to_end
    assert report.outcomes.lost == 0
    assert e2e.p99_ms is not None and e2e.max_ms is not None, e2e
    assert e2e.p99_ms >= 0.75 * pause_s * 1000, e2e
    assert e2e.max_ms >= 0.9 * pause_s * 1000, e2e
    # The sender kept its schedule through the pause: the stall is the pipeline's.
    send_delay_p99 = report.load.send_delay.p99_ms
    assert send_delay_p99 is not None and send_delay_p99 < 200


def test_a_threshold_that_must_fail_exits_1_and_says_so(pipeline: Settings) -> None:
    result = paysim(pipeline, "send", "--count", "50", "--seed", "6",
                    "--threshold", "p99_ms < 0.001", "--threshold", "lost == 0")
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "thresholds failed: p99_ms < 0.001" in result.stderr


def test_a_windowed_threshold_fails_on_a_bad_window_even_if_the_run_passes(
    pipeline: Settings,
) -> None:
    processor = ps_pid(pipeline, "processor-0")

    def pause() -> None:
        os.kill(processor, signal.SIGSTOP)
        try:
            threading.Event().wait(1.5)
        finally:
            os.kill(processor, signal.SIGCONT)

    # Paused once 50 of the run's 400 payments (50/s for 8 s) were notified: 7 s are left.
    result = send_with_fault(pipeline, 50, pause, "--rate", "50", "--duration", "8s",
                             "--seed", "8", "--threshold", "p50_ms < 1000",
                             "--threshold", "p90_ms < 1000 @ 2s")
    report = parse_report(json.loads(result.stdout))
    whole, windowed = report.thresholds
    # The pause holds up a fifth of the run at most, a quarter of its window by over 1 s.
    # (A whole-run p90 sat next to its bound on a loaded machine: p50 leaves room.)
    assert whole.passed, whole
    assert not windowed.passed and windowed.failed_windows >= 1, windowed
    assert not report.passed
    assert result.returncode == 1


def test_replaying_a_record_sends_the_same_payments_and_gets_the_same_outcomes(
    pipeline: Settings, tmp_path: Path,
) -> None:
    record = tmp_path / "burst.jsonl"
    first = send_report(pipeline, "--count", "300", "--seed", "10", "--record", str(record))

    again = send_report(pipeline, "--replay", str(record))

    # by_reason: each (status, code) with its count, in the same order.
    assert again.load.sent == 300
    assert again.outcomes.by_reason == first.outcomes.by_reason
    assert again.outcomes.approved_amounts == first.outcomes.approved_amounts
    faster = send_report(pipeline, "--replay", str(record), "--rate", "500")
    assert faster.load.target_rate == 500
    assert faster.outcomes.by_reason == first.outcomes.by_reason


def test_a_paysim_csv_replays_with_one_outcome_per_row(pipeline: Settings,
                                                       tmp_path: Path) -> None:
    rows = ["step,type,amount,nameOrig,oldbalanceOrg,newbalanceOrig,nameDest,oldbalanceDest,"
            "newbalanceDest,isFraud,isFlaggedFraud"]
    kinds = ["PAYMENT", "TRANSFER", "CASH_OUT", "DEBIT", "CASH_IN"]
    for i in range(25):
        rows.append(f"{1 + i // 10},{kinds[i % 5]},{(i + 1) * 13.57:.2f},C{1000 + i % 7},"
                    f"5000.00,4000.00,M{2000 + i % 4},0.0,0.0,0,0")
    csv = tmp_path / "paysim.csv"
    csv.write_text("\n".join(rows) + "\n")

    report = send_report(pipeline, "--replay", str(csv), "--rate", "100")

    assert report.load.sent == 25
    assert report.outcomes.completed == 25
    assert report.outcomes.lost == 0


def test_report_files_are_written_and_valid(pipeline: Settings, tmp_path: Path) -> None:
    out, html = tmp_path / "report.json", tmp_path / "report.html"
    send(pipeline, "--rate", "50", "--duration", "3s", "--seed", "12", "--out", str(out),
         "--html", str(html))
    report = json.loads(out.read_text())
    schema = json.loads((Path(__file__).resolve().parents[2] / "paysim" / "load"
                         / "report.schema.json").read_text())
    jsonschema.validate(report, schema)
    page = html.read_text()
    assert report["run_id"] in page
    for forbidden in ("http://", "https://", "<link", " src="):
        assert forbidden not in page


def test_run_load_through_the_http_api_returns_the_report_with_its_verdicts(
    pipeline: Settings,
) -> None:
    """The entry point `paysim send` and the benchmark share, with the ingress that sends from
    a pool and learns some outcomes (the edge's declines) from its own answers."""
    ticks: list[Tick] = []
    request = SendRequest(count=200, seed=14, via="http",
                          thresholds=("lost == 0", "p99_ms < 0.001"))

    report = run_load(pipeline, request, ticks.append)

    assert report.via == "http" and report.seed == 14 and report.load.mode == "burst"
    assert report.load.sent == report.outcomes.completed == 200
    assert {row.reason_code: row.count for row in report.outcomes.by_reason} == dict(
        injected(14, 200, pipeline))
    lost, fast = report.thresholds
    assert lost.passed and lost.actual == 0
    assert not fast.passed and not report.passed
    assert [t.expression for t in report.failed_thresholds] == ["p99_ms < 0.001"]
    assert ticks and ticks[-1].completed == 200  # the last tick comes after the run


def test_ctrl_c_stops_sending_and_prints_the_partial_report_with_its_run_id(
    pipeline: Settings, tmp_path: Path,
) -> None:
    out = tmp_path / "report.json"
    before = notified_so_far(pipeline)
    child, stdout, stderr = start_send(pipeline, "--rate", "100", "--duration", "120s",
                                       "--seed", "8", "--out", str(out))
    try:
        # Interrupted on progress, not on time: once 200 of its payments came through.
        assert wait_until(lambda: notified(pipeline) >= before + 200, timeout=90)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=90)
    finally:
        child.kill()
    report = parse_report(json.loads(stdout.text()), "paysim send --json")
    errors = stderr.text()
    assert child.returncode == 130, errors
    assert "stopping: no more payments are sent" in errors
    assert 200 <= report.load.sent < report.load.scheduled == 12_000
    assert report.outcomes.completed == report.load.sent  # in flight at the Ctrl-C: waited for
    assert report.outcomes.lost == 0
    assert f"interrupted: sent {report.load.sent:,} of 12,000 payments" in errors
    assert f"paysim audit --run {report.run_id}" in errors
    assert parse_report(json.loads(out.read_text()), str(out)) == report
    audit = paysim(pipeline, "audit", "--run", report.run_id, "--json")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def children_of(pid: int) -> set[int]:
    return {int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()}


def test_sigterm_stops_a_run_of_several_workers_as_ctrl_c_does(pipeline: Settings) -> None:
    before = notified_so_far(pipeline)
    child, stdout, stderr = start_send(pipeline, "--workers", "2", "--rate", "100",
                                       "--duration", "120s", "--seed", "12")
    try:
        assert wait_until(lambda: notified(pipeline) >= before + 150, timeout=90), \
            stderr.text()
        workers = children_of(child.pid)
        assert len(workers) >= 2, workers  # the two generator processes (and spawn's helper)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=90)
    finally:
        child.kill()
    errors = stderr.text()
    assert child.returncode == 130, errors
    assert "stopping: no more payments are sent" in errors, errors
    report = parse_report(json.loads(stdout.text()), "paysim send --json")
    assert 150 <= report.load.sent < report.load.scheduled == 12_000
    assert report.outcomes.completed == report.load.sent and report.outcomes.lost == 0
    # The generator processes stopped with it: none sends on after the run.
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
                      timeout=30), workers
    audit = paysim(pipeline, "audit", "--run", report.run_id, "--json")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_a_second_ctrl_c_stops_waiting_for_outcomes_and_still_names_the_run(
    pipeline: Settings,
) -> None:
    notifier = ps_pid(pipeline, "notifier-0")
    before = notified_so_far(pipeline)
    child, stdout, stderr = start_send(pipeline, "--rate", "100", "--duration", "120s",
                                       "--seed", "9")
    try:
        assert wait_until(lambda: notified(pipeline) >= before + 100, timeout=90)
        os.kill(notifier, signal.SIGSTOP)  # nothing more completes: only a second Ctrl-C ends it
        child.send_signal(signal.SIGINT)
        assert wait_until(lambda: stderr.saying("stopping: no more payments"), timeout=30)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=90)
    finally:
        os.kill(notifier, signal.SIGCONT)
        child.kill()
    report = parse_report(json.loads(stdout.text()), "paysim send --json")
    errors = stderr.text()
    assert child.returncode == 130, errors
    assert "stopping now: not waiting for more outcomes" in errors, errors
    assert report.outcomes.completed < report.load.sent
    assert f"paysim audit --run {report.run_id}" in errors


def test_the_kafka_sender_reports_a_payment_the_broker_refused(
        local_stack, service_flags: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    """Only failed deliveries come back to the sender (delivery.report.only.error): one the
    broker refuses (a topic that takes no record of a payment's size) still fails the run
    with the broker's word, not silently."""
    name = f"paysim.test.small-{secrets.token_hex(3)}"
    settings = settings_for({**service_flags, "topics.requested": name})
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "100"})])[
        name].result(timeout=30)
    sender = KafkaIngress(settings, load_keys(settings))
    for payment in PaymentStream(build_population(3), 3).take(2):
        sender.send(payment, "run-refused", None)
    with pytest.raises(PaysimError, match=r"did not take every payment: .*too large"):
        sender.finish()

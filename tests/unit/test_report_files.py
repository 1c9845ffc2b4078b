"""report.json files: the schema, the self-contained HTML page, load/compare, `paysim report`.

The reports are real ones: RunMetrics records synthetic outcome entries (as the collector does)
and build_report turns them into the paysim.report/1 document, a RunReport; what it writes
(RunReport.to_dict, as report.json holds it) is checked as JSON.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from hdrh.histogram import HdrHistogram
from jsonschema import Draft202012Validator
from rich.console import Console

import paysim.cli
from paysim.cli import render
from paysim.cli import report as cli_report
from paysim.cli.report import report as report_group
from paysim.infra.errors import ConfigError
from paysim.load.html import embed_json, nice_step, render_html
from paysim.load.metrics import OperationMetrics, RunMetrics
from paysim.load.report import (
    AUDIT_NOT_APPLICABLE,
    ErrorRow,
    LatencyBlock,
    RunInfo,
    RunReport,
    TargetReport,
    build_report,
)
from paysim.load.report_compare import (
    HIGHER,
    LOWER,
    Row,
    diff_rows,
    format_change,
    load_report,
    report_schema,
    schema_error,
    validate_report,
)
from paysim.load.thresholds import parse_threshold
from paysim.pipeline.store import DoneEntry
from tests.unit.cli_runner import PaysimCli

T0 = 1_700_000_000_000_000  # the run's start, Unix microseconds
SECOND = 1_000_000

# Reason codes and who decides them: the authorizer's declines skip the processor.
AUTHORIZER_DECLINES = ("14", "54", "N7")
ISSUER_DECLINES = ("05", "51", "91")

LatencyModel = Callable[[int, random.Random], float]  # (second, rng) -> end-to-end ms


def steady(ms: float) -> LatencyModel:
    return lambda second, rng: ms * rng.uniform(0.8, 1.25)


def outcome_entry(index: int, intended_us: int, sent_us: int, e2e_us: int, code: str,
                  currency: str, amount: int) -> DoneEntry:
    """A done entry as store.read_done_entry gives it, notified ``e2e_us`` after its intended
    send time."""
    status = "approved" if code == "00" else "declined"
    authorized = sent_us + max(1, e2e_us // 5)
    stages = {"requested": sent_us, "authorized": authorized, "notified": intended_us + e2e_us}
    if code not in AUTHORIZER_DECLINES:
        stages["processed"] = authorized + max(1, e2e_us // 2)
    return DoneEntry(f"00000000-0000-4000-8000-{index:012d}", status, code, amount, currency,
                     index, stages)


def synthetic_report(rates: Sequence[int], latency: LatencyModel | None = None, *,
                     seed: int = 7, run_id: str = "run-a", scenario: str | None = "steady",
                     decline_share: float = 0.1, lost: int = 0, mode: str = "open",
                     thresholds: Sequence[tuple[str, int | None]] = (),
                     operations: OperationMetrics | None = None) -> RunReport:
    """A real report over ``rates[s]`` payments in second s, outcomes from a seeded mix."""
    latency = latency or steady(20.0)
    rng = random.Random(seed)
    metrics = RunMetrics(T0)
    metrics.operations = operations
    index = 0
    for second, count in enumerate(rates):
        for k in range(count):
            intended = T0 + second * SECOND + k * SECOND // count
            sent = intended + rng.randint(50, 400)
            metrics.record_send(intended, sent)
            index += 1
            if index <= lost:
                continue
            if rng.random() < decline_share:
                code = rng.choice(AUTHORIZER_DECLINES + ISSUER_DECLINES)
            else:
                code = "00"
            e2e = int(latency(second, rng) * 1000)
            currency = rng.choice(["EUR", "USD", "JPY", "BHD"])
            metrics.record_outcome(outcome_entry(index, intended, sent, e2e, code, currency,
                                                 rng.randint(100, 50_000)))
    duration = len(rates)
    target = sum(rates) / duration if duration and mode == "open" else None
    info = RunInfo(run_id=run_id, seed=seed, via="kafka", mode=mode, scenario=scenario,
                   target_rate=target,
                   stages=[{"duration_s": float(duration), "target_rate": float(target or 0)}],
                   scheduled=sum(rates),
                   lost_ids=[f"00000000-0000-4000-8000-{i:012d}" for i in range(1, lost + 1)],
                   finished_us=T0 + (duration + 1) * SECOND)
    return build_report(metrics, info, [parse_threshold(expression, window)
                                         for expression, window in thresholds])


@pytest.fixture(scope="module")
def report_a() -> RunReport:
    return synthetic_report([20, 40, 40, 40, 20], steady(20.0),
                            thresholds=[("p99_ms < 1000", None), ("p99_ms < 5", 2),
                                        ("achieved_rate >= 0.9 * target", None)])


@pytest.fixture(scope="module")
def report_b() -> RunReport:
    """The same load as A, twice as slow, with two payments lost."""
    return synthetic_report([20, 40, 40, 40, 20], steady(40.0), run_id="run-b", lost=2,
                            thresholds=[("p99_ms < 1000", None), ("p99_ms < 5", 2),
                                        ("achieved_rate >= 0.9 * target", None)])


@pytest.fixture(scope="module")
def empty_report() -> RunReport:
    """Nothing sent, nothing completed: an empty timeline and latency blocks with no figures."""
    return synthetic_report([], run_id="run-empty", scenario=None, mode="burst")


@pytest.fixture(scope="module")
def lifecycle_run() -> RunReport:
    """A run with a lifecycle mix: captures in two currencies, a refund, a refused void and
    an expiry that never came."""
    operations = OperationMetrics()
    for kind, code, amount, currency, latency_ms in [
            ("capture", "00", 1_000, "USD", 12), ("capture", "00", 2_500, "EUR", 30),
            ("capture", "00", 500, "USD", 8), ("refund", "00", 250, "USD", 15),
            ("void", "57", 0, "EUR", 9)]:
        operations.record_scheduled(kind)
        operations.record_answer(kind, code, amount, currency, T0, T0 + latency_ms * 1000)
    operations.record_scheduled("expire")
    return synthetic_report([10, 10], run_id="run-life", operations=operations)


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables at 200 columns, so no figure is wrapped in the captured output."""
    monkeypatch.setattr(render.console, "_width", 200)


def write(tmp_path: Path, name: str, data: Any) -> Path:
    """A file of ``data``: a report as report.json holds it, JSON of anything else, or text."""
    if isinstance(data, RunReport):
        data = data.to_dict()
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# ------------------------------------------------------------------------------- schema


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(report_schema())


def test_real_reports_validate(report_a, report_b, empty_report) -> None:
    for data in (report_a.to_dict(), report_b.to_dict(), empty_report.to_dict()):
        assert schema_error(data) is None
        assert schema_error(json.loads(json.dumps(data))) is None  # as written to a file
        validate_report(data)


def test_a_lifecycle_table_counts_each_kind_and_answer(lifecycle_run, report_a) -> None:
    table = lifecycle_run.lifecycle
    assert table is not None
    assert (table.scheduled, table.answered, table.lost) == (6, 5, 1)
    assert [(row.kind, row.scheduled, row.answered, row.lost) for row in table.kinds] == [
        ("capture", 3, 3, 0), ("void", 1, 1, 0), ("expire", 1, 0, 1), ("refund", 1, 1, 0)]
    capture = table.kinds[0].latency
    assert capture.count == 3  # HdrHistogram's 3 significant digits
    assert capture.p50_ms == pytest.approx(12.0, rel=1e-3)
    assert capture.max_ms == pytest.approx(30.0, rel=1e-3)
    assert table.kinds[2].latency.count == 0 and table.kinds[2].latency.p99_ms is None
    assert [(r.kind, r.reason_code, r.count, r.amounts) for r in table.by_code] == [
        ("capture", "00", 3, {"EUR": 2_500, "USD": 1_500}), ("void", "57", 1, {"EUR": 0}),
        ("refund", "00", 1, {"USD": 250})]
    assert schema_error(lifecycle_run.to_dict()) is None
    # A run without a mix keeps today's report: no lifecycle key at all.
    assert report_a.lifecycle is None and "lifecycle" not in report_a.to_dict()


def test_a_lifecycle_table_in_the_terminal_and_the_page(tmp_path: Path, lifecycle_run,
                                                        wide_console) -> None:
    result = CliRunner().invoke(report_group, ["show",
                                               str(write(tmp_path, "l.json", lifecycle_run))])
    assert result.exit_code == 0, result.output
    for fragment in ("lifecycle operations", "lifecycle answers", "capture", "expire",
                     "not permitted in the payment's state", "15.00 USD", "25.00 EUR"):
        assert fragment in result.output, fragment
    page = render_html(lifecycle_run)
    assert 'id="lifecycle"' in page and 'id="lifecycle-answers"' in page
    assert "25.00 EUR" in page and "not permitted in the payment&#x27;s state" in page
    assert 'id="lifecycle"' not in render_html(synthetic_report([5]))


def test_the_synthetic_reports_carry_what_the_tests_rely_on(report_a, report_b,
                                                           empty_report) -> None:
    assert report_a.outcomes.completed == 160
    assert report_b.outcomes.completed == 158 and report_b.outcomes.lost == 2
    assert {t.passed for t in report_a.thresholds} == {True, False}
    assert report_a.passed is False
    assert len(report_a.timeline) >= 5 and report_a.timeline[0].p99_ms is not None
    assert "p99_ms" in report_a.to_dict()["timeline"][0]
    assert report_a.latency.end_to_end.histogram
    assert set(report_a.latency.stages) == {"authorizer", "processor", "notifier"}
    assert empty_report.timeline == [] and empty_report.outcomes.completed == 0
    assert empty_report.latency.end_to_end == LatencyBlock(count=0, histogram=None)
    assert empty_report.to_dict()["latency"]["end_to_end"] == {"count": 0, "histogram": None}


def _drop(path: Sequence[str | int]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
    return mutate


def _set(path: Sequence[str | int], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return mutate


@pytest.mark.parametrize(("mutate", "where"), [
    (_drop(["run_id"]), "(top level): 'run_id' is a required property"),
    (_set(["surprise"], 1), "(top level): Additional properties"),
    (_set(["outcomes", "completed"], "160"), "outcomes.completed"),
    (_set(["outcomes", "approved_ratio"], 1.5), "outcomes.approved_ratio"),
    (_drop(["latency", "end_to_end", "p99_ms"]), "latency.end_to_end"),
    (_set(["latency", "stages", "processor", "histogram"], None),
     "latency.stages.processor.histogram"),
    (_set(["outcomes", "by_reason", 0, "count"], -1), "outcomes.by_reason[0].count"),
    (_drop(["thresholds", 1, "passed"]), "thresholds[1]"),
    (_set(["thresholds", 0, "worst_window"], {"start_s": 3}), "thresholds[0].worst_window"),
    (_set(["timeline", 2, "p99_ms"], "slow"), "timeline[2].p99_ms"),
    (_set(["load", "mode"], "closed"), "load.mode"),
    (_set(["outcomes", "approved_amounts", "euro"], {"minor_units": 1, "formatted": "x"}),
     "outcomes.approved_amounts"),
])
def test_broken_reports_fail_with_the_path_of_the_problem(report_a, mutate, where) -> None:
    broken = report_a.to_dict()
    mutate(broken)
    problem = schema_error(broken)
    assert problem is not None and problem.startswith(where), problem
    with pytest.raises(ConfigError, match=re.escape(where)):
        validate_report(broken)


def test_a_report_of_another_schema_is_named_as_such(report_a) -> None:
    with pytest.raises(ConfigError, match=r"schema is 'paysim\.report/2', expected"):
        validate_report({**report_a.to_dict(), "schema": "paysim.report/2"}, "x.json")


# --------------------------------------------------------------------------------- html


FORBIDDEN_IN_HTML = ("http://", "https://", "<link", "src=", "@import", "url(")


def embedded(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="paysim-report">(.*?)</script>',
                      page, re.S)
    assert match, "the report JSON should be embedded"
    return json.loads(match.group(1))


def series_points(page: str, chart_id: str, series: str) -> dict[int, float]:
    chart = page[page.index(f'id="{chart_id}"'):]
    chart = chart[:chart.index("</svg>")]
    match = re.search(rf'data-series="{series}" data-points="([^"]*)"', chart)
    assert match, f"no {series} series in {chart_id}"
    pairs = (item.split(":") for item in match.group(1).split())
    return {int(second): float(value) for second, value in pairs}


def test_html_is_self_contained_and_embeds_the_report(report_a) -> None:
    page = render_html(report_a)
    assert page.startswith("<!DOCTYPE html>")
    assert embedded(page) == json.loads(json.dumps(report_a.to_dict()))
    assert page.count("<svg") == 3
    for needle in FORBIDDEN_IN_HTML:
        assert needle not in page, needle
    assert "<script" in page and page.count("<script") == 1  # the JSON only, nothing to run
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_html_charts_carry_the_timeline_figures(report_a) -> None:
    page = render_html(report_a)
    timeline = report_a.timeline
    p50 = series_points(page, "chart-latency", "p50_ms")
    p99 = series_points(page, "chart-latency", "p99_ms")
    completed = series_points(page, "chart-throughput", "completed")
    sent = series_points(page, "chart-throughput", "sent")
    for row in timeline:
        if row.p99_ms is not None:
            assert p50[row.second] == row.p50_ms
            assert p99[row.second] == row.p99_ms
        assert completed[row.second] == row.completed
        assert sent[row.second] == row.sent
    assert sum(completed.values()) == report_a.outcomes.completed
    for reason in report_a.outcomes.by_reason:
        assert f'data-code="{reason.reason_code}" data-count="{reason.count}"' in page


def test_html_tables_show_the_figures(report_a) -> None:
    page = render_html(report_a)
    e2e = report_a.latency.end_to_end
    latency = page[page.index('id="latency"'):]
    latency = latency[:latency.index("</table>")]
    assert "end to end" in latency and "processor" in latency and "p99.9 ms" in latency
    assert f"{e2e.p99_ms:,.1f}" in latency
    assert report_a.run_id in page and "160" in page
    for currency, amount in report_a.outcomes.approved_amounts.items():
        assert amount.formatted in page and currency in page
    thresholds = page[page.index('id="thresholds"'):]
    assert thresholds.count('<tr class="pass">') == 2
    assert thresholds.count('<tr class="fail">') == 1
    assert "p99_ms &lt; 5" in thresholds  # escaped
    assert 'class="badge fail">FAILED' in page


def test_html_escapes_every_text_and_the_json_cannot_close_its_tag(report_a) -> None:
    hostile = msgspec.structs.replace(
        report_a, scenario="</script><script>alert(1)</script> & <b>bold</b> src=x",
        run_id="run-<img src=x onerror=alert(1)>", via="https://example.invalid/x")
    page = render_html(hostile)
    assert page.count("</script>") == 1
    assert "<img" not in page and "<b>" not in page and "src=" not in page
    assert "&lt;&#47;script&gt;&lt;script&gt;alert(1)" in page
    for needle in FORBIDDEN_IN_HTML:
        assert needle not in page, needle
    assert embedded(page) == hostile.to_dict()
    assert "\\u003c\\u002fscript" in embed_json(hostile)


def test_html_of_an_empty_run_renders(empty_report) -> None:
    page = render_html(empty_report)
    assert embedded(page) == json.loads(json.dumps(empty_report.to_dict()))
    assert page.count("<svg") == 3 and "no per-second data in this run" in page
    assert "no outcomes in this run" in page and "No thresholds were set" in page
    for needle in FORBIDDEN_IN_HTML:
        assert needle not in page


def test_html_of_a_run_with_gaps_and_lost_payments() -> None:
    data = synthetic_report([30, 0, 0, 30], steady(5.0), lost=3, decline_share=0.0)
    assert [row.second for row in data.timeline] == [0, 3]
    page = render_html(data)
    assert series_points(page, "chart-throughput", "sent") == {0: 30.0, 1: 0.0, 2: 0.0,
                                                              3: 30.0}
    assert "3 payments had no outcome" in page
    assert data.outcomes.lost_ids[0] in page


@pytest.mark.parametrize(("span", "step"), [(0, 1.0), (9.3, 2.0), (100, 20.0), (0.7, 0.2),
                                            (1234, 250.0), (12, 2.5)])
def test_nice_step(span: float, step: float) -> None:
    assert nice_step(span) == step


# ----------------------------------------------------------------------- load and compare


def test_load_report_reads_a_valid_file(tmp_path: Path, report_a) -> None:
    loaded = load_report(write(tmp_path, "a.json", report_a))
    assert loaded == report_a
    assert loaded.to_dict() == json.loads(json.dumps(report_a.to_dict()))


@pytest.mark.parametrize(("content", "fragments"), [
    (None, ["no report file", "missing.json"]),
    ("{not json", ["bad.json", "is not valid JSON", "line 1 column 2"]),
    ("", ["bad.json", "is not valid JSON"]),
    ("[1, 2]", ["bad.json", "does not match the paysim.report/1 schema at (top level)"]),
    ({"schema": "paysim.report/1"}, ["bad.json", "(top level)", "is a required property"]),
])
def test_load_report_errors_are_one_line(tmp_path: Path, content, fragments) -> None:
    path = tmp_path / "missing.json" if content is None else write(tmp_path, "bad.json", content)
    with pytest.raises(ConfigError) as caught:
        load_report(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    for fragment in fragments:
        assert fragment in message
    assert caught.value.exit_code == 2


def test_load_report_names_the_first_schema_error_path(tmp_path: Path, report_a) -> None:
    broken = report_a.to_dict()
    broken["latency"]["stages"]["notifier"]["p90_ms"] = "fast"
    path = write(tmp_path, "broken.json", broken)
    with pytest.raises(ConfigError, match=r"broken\.json .*latency\.stages\.notifier\.p90_ms"):
        load_report(path)


def test_load_report_of_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_report(tmp_path)


def test_row_change_and_verdict() -> None:
    slower = Row("p99", 10.0, 15.0, "ms", LOWER)
    assert (slower.change, slower.change_pct, slower.verdict) == (5.0, 50.0, "worse")
    faster = Row("rate", 200.0, 150.0, "per_s", HIGHER)
    assert (faster.change, faster.change_pct, faster.verdict) == (-50.0, -25.0, "worse")
    assert Row("lost", 3, 0, "count", LOWER).verdict == "better"
    assert Row("lost", 0, 2, "count", LOWER).change_pct is None  # from zero: no percentage
    assert Row("p99", None, 4.0, "ms", LOWER).change is None
    assert Row("p99", 4.0, 4.0, "ms", LOWER).verdict == "same"
    assert Row("completed", 4, 9, "count").verdict is None
    assert format_change(Row("approved", 0.9, 0.85, "ratio", HIGHER)) == ("-5.00 pt", "-5.6%")
    assert format_change(slower) == ("+5.00 ms", "+50.0%")


def test_diff_rows_give_the_right_changes(report_a, report_b) -> None:
    rows = {row.figure: row for row in diff_rows(report_a, report_b)}
    completed = rows["completed"]
    assert (completed.a, completed.b, completed.change) == (160, 158, -2)
    assert completed.change_pct == pytest.approx(-1.25)
    assert (rows["lost"].a, rows["lost"].b, rows["lost"].verdict) == (0, 2, "worse")
    ratio = rows["approved ratio"]
    assert ratio.a == report_a.outcomes.approved_ratio
    assert ratio.change == pytest.approx(report_b.outcomes.approved_ratio
                                         - report_a.outcomes.approved_ratio)
    p99 = rows["end to end p99"]
    e2e_a, e2e_b = report_a.latency.end_to_end, report_b.latency.end_to_end
    assert (p99.a, p99.b) == (e2e_a.p99_ms, e2e_b.p99_ms)
    assert p99.change_pct == pytest.approx((e2e_b.p99_ms - e2e_a.p99_ms) / e2e_a.p99_ms * 100)
    assert 80 < p99.change_pct < 120 and p99.verdict == "worse"  # twice as slow
    for stage in ("authorizer", "processor", "notifier"):
        for label in ("p50", "p90", "p99", "p99.9", "max"):
            assert rows[f"{stage} {label}"].verdict == "worse"
    assert rows["duration"].change == 0 and rows["duration"].verdict is None
    shares_a = {r.reason_code: r.share for r in report_a.outcomes.by_reason}
    shares_b = {r.reason_code: r.share for r in report_b.outcomes.by_reason}
    for code in shares_a.keys() | shares_b.keys():
        row = next(r for name, r in rows.items() if name.startswith(f"share {code} "))
        assert (row.a, row.b) == (shares_a.get(code, 0.0), shares_b.get(code, 0.0))
    assert rows["thresholds failed"].a == 1


def test_diff_against_an_empty_run(report_a, empty_report) -> None:
    rows = {row.figure: row for row in diff_rows(report_a, empty_report)}
    assert rows["end to end p99"].b is None and rows["end to end p99"].change is None
    assert rows["processor max"].b is None
    assert rows["completed"].change == -160
    assert rows["target rate"].b is None


def _target(errors: dict[str, int]) -> TargetReport:
    return TargetReport(kind="kafka", address="orders", outcome_topic="decisions",
                        correlate="/id = {payment_id}", concurrency=None,
                        errors=sum(errors.values()), audit=AUDIT_NOT_APPLICABLE,
                        by_error=[ErrorRow(kind, n, f"first {kind}")
                                  for kind, n in errors.items()])


def test_diff_of_two_target_runs_compares_their_errors_and_lost(report_a, report_b) -> None:
    a = msgspec.structs.replace(report_a, target=_target({"unparsable outcome": 3}))
    b = msgspec.structs.replace(report_b, target=_target({"no decision": 2,
                                                          "unparsable outcome": 1}))
    rows = {row.figure: row for row in diff_rows(a, b)}
    assert (rows["target errors"].a, rows["target errors"].b) == (3, 3)
    assert rows["target errors"].verdict == "same"
    unparsable = rows["errors: unparsable outcome"]
    assert (unparsable.a, unparsable.b, unparsable.verdict) == (3, 1, "better")
    no_decision = rows["errors: no decision"]
    assert (no_decision.a, no_decision.b, no_decision.verdict) == (0, 2, "worse")
    assert (rows["lost"].a, rows["lost"].b) == (a.outcomes.lost, b.outcomes.lost)
    # Against paysim's own pipeline (no target block) the target's figures are missing.
    mixed = {row.figure: row for row in diff_rows(a, report_b)}
    assert (mixed["target errors"].a, mixed["target errors"].b) == (3, None)
    assert "target errors" not in {row.figure for row in diff_rows(report_a, report_b)}


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture
def files(tmp_path: Path, report_a, report_b) -> tuple[Path, Path]:
    return write(tmp_path, "a.json", report_a), write(tmp_path, "b.json", report_b)


def test_report_show_prints_the_tables(files, report_a, wide_console) -> None:
    result = CliRunner().invoke(report_group, ["show", str(files[0])])
    assert result.exit_code == 0, result.output
    e2e = report_a.latency.end_to_end
    for fragment in ("run run-a", "scenario steady", "seed 7", "sent 160", "completed 160",
                     f"achieved {report_a.load.achieved_rate:,.1f}/s", "outcomes",
                     "approved amounts", "latency", "end to end", "processor", "p99.9 ms",
                     f"{e2e.p99_ms:.1f}", "thresholds", "p99_ms < 5", "FAIL",
                     "thresholds failed: p99_ms < 5"):
        assert fragment in result.output, fragment
    for currency, amount in report_a.outcomes.approved_amounts.items():
        assert f"{currency}" in result.output and amount.formatted in result.output


def test_report_show_of_runs_with_losses_or_nothing(tmp_path: Path, report_b, empty_report,
                                                    wide_console) -> None:
    result = CliRunner().invoke(report_group, ["show", str(write(tmp_path, "b.json", report_b))])
    assert result.exit_code == 0, result.output
    assert "2 payments had no outcome: 00000000-0000-4000-8000-000000000001" in result.output
    result = CliRunner().invoke(report_group, ["show",
                                               str(write(tmp_path, "e.json", empty_report))])
    assert result.exit_code == 0, result.output
    assert "run run-empty" in result.output and "completed 0" in result.output


def test_report_show_json_prints_the_report(files, report_a) -> None:
    result = CliRunner().invoke(report_group, ["show", str(files[0]), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == json.loads(json.dumps(report_a.to_dict()))


def test_report_diff_prints_the_changes(files, wide_console) -> None:
    result = CliRunner().invoke(report_group, ["diff", str(files[0]), str(files[1])])
    assert result.exit_code == 0, result.output
    for fragment in ("run run-a", "run run-b", "figure", "change %", "end to end p99",
                     "processor p99.9", "approved ratio", "lost", "-1.2%", "+2"):
        assert fragment in result.output, fragment


def test_report_diff_json(files, report_a, report_b) -> None:
    result = CliRunner().invoke(report_group, ["diff", str(files[0]), str(files[1]), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert (data["a"]["run_id"], data["b"]["run_id"]) == ("run-a", "run-b")
    rows = {row["figure"]: row for row in data["rows"]}
    assert rows["lost"] == {"figure": "lost", "a": 0, "b": 2, "unit": "count",
                            "better": "lower", "change": 2, "change_pct": None,
                            "verdict": "worse"}
    assert rows["end to end p50"]["a"] == report_a.latency.end_to_end.p50_ms


def test_report_of_a_missing_file_fails(tmp_path: Path, files) -> None:
    missing = str(tmp_path / "nope.json")
    for args in (["show", missing], ["diff", str(files[0]), missing]):
        result = CliRunner().invoke(report_group, args)
        assert result.exit_code != 0
        assert isinstance(result.exception, ConfigError)
        assert "no report file" in str(result.exception)


def test_report_errors_through_paysim_main_are_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once registered under `paysim`, a bad file is one stderr line and exit code 2."""
    monkeypatch.setitem(paysim.cli.cli.commands, "report", report_group)
    bad = write(tmp_path, "bad.json", "{oops")
    for args in (["report", "show", str(tmp_path / "nope.json")], ["report", "show", str(bad)]):
        with pytest.raises(SystemExit) as exited:
            paysim.cli.main(args)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("paysim: error: "), err


def test_report_diff_colours_worse_red_and_better_green(files, monkeypatch) -> None:
    colour = Console(force_terminal=True, color_system="standard", width=200, highlight=False)
    monkeypatch.setattr(cli_report, "console", colour)
    result = CliRunner().invoke(report_group, ["diff", str(files[0]), str(files[1])])
    assert result.exit_code == 0
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines()
             if line.count("│") > 2}
    red, green = "\x1b[31m", "\x1b[32m"
    assert red in lines["end to end p99"] and red in lines["lost"]  # B is slower, lost two
    assert red not in lines["completed"] and green not in lines["completed"]  # no direction
    reversed_ = CliRunner().invoke(report_group, ["diff", str(files[1]), str(files[0])])
    lines = {line.split("│")[1].strip(): line for line in reversed_.output.splitlines()
             if line.count("│") > 2}
    assert green in lines["end to end p99"] and green in lines["lost"]


# --------------------------------------------------------------------------- histograms


def test_histograms_decode_to_the_figures_and_merge(report_a, report_b) -> None:
    """What docs/report.md promises: any HdrHistogram library can decode and add them."""
    blocks = [report_a.latency.end_to_end, report_b.latency.end_to_end]
    decoded = [HdrHistogram.decode(block.histogram) for block in blocks]
    for block, histogram in zip(blocks, decoded, strict=True):
        assert histogram.get_total_count() == block.count
        assert histogram.get_value_at_percentile(99) / 1000 == block.p99_ms
        assert histogram.get_max_value() / 1000 == block.max_ms
    merged = HdrHistogram(1, 3_600_000_000, 3)
    for histogram in decoded:
        merged.add(histogram)
    assert merged.get_total_count() == 160 + 158
    assert blocks[0].p50_ms < merged.get_value_at_percentile(50) / 1000 < blocks[1].p50_ms


# ------------------------------------------------------------------------ hostile reports

HOSTILE = "Shop [/bold] end [link=http://x]y[/link] \x1b[31m"
HOSTILE_SHOWN = "Shop [/bold] end [link=http://x]y[/link] \\x1b[31m"


def test_report_show_prints_hostile_text_literally(tmp_path: Path, report_b,
                                                   paysim_cli: PaysimCli) -> None:
    """A report file is user input: its run id, scenario, reason texts, thresholds and lost ids
    are printed as written, control characters visible, and nothing breaks the markup."""
    data = report_b.to_dict()
    data["run_id"] = f"run {HOSTILE}"
    data["scenario"] = f"scn [bold]{HOSTILE}"
    data["outcomes"]["lost_ids"][0] = f"lost {HOSTILE}"
    data["outcomes"]["by_reason"][0]["reason_text"] = f"why {HOSTILE}"
    data["thresholds"][1]["expression"] = f"p99_ms < 5 {HOSTILE}"
    path = write(tmp_path, "hostile.json", data)

    result = paysim_cli("report", "show", str(path), env={"COLUMNS": "400"})

    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    for fragment in (f"run run {HOSTILE_SHOWN}", f"scenario scn [bold]{HOSTILE_SHOWN}",
                     f"lost {HOSTILE_SHOWN}", f"why {HOSTILE_SHOWN}",
                     f"thresholds failed: p99_ms < 5 {HOSTILE_SHOWN}"):
        assert fragment in result.stdout, fragment


def test_report_diff_prints_hostile_paths_and_run_ids_literally(
        tmp_path: Path, report_a, paysim_cli: PaysimCli) -> None:
    data = report_a.to_dict()
    data["run_id"] = HOSTILE
    folder = tmp_path / "[red]x"
    folder.mkdir()
    path = write(folder, "a.json", data)

    result = paysim_cli("report", "diff", str(path), str(path), env={"COLUMNS": "400"})

    assert result.returncode == 0, result.stderr
    assert f"A  {path}  (run {HOSTILE_SHOWN})" in result.stdout
    assert "\x1b" not in result.stdout


def test_an_error_naming_hostile_input_shows_its_control_characters(
        tmp_path: Path, paysim_cli: PaysimCli) -> None:
    missing = tmp_path / "nope\x1b[2J\rforged line\u202e.json"

    result = paysim_cli("report", "show", str(missing))

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("paysim: error: ")
    assert "nope\\x1b[2J\\rforged line\\u202e.json" in result.stderr
    assert "\x1b" not in result.stderr and "\r" not in result.stderr

"""Driving another system (load/targets): JSON pointers, templates, reading answers and
outcome records, and the flags that choose a target. Pure: no server, no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from jsonschema import Draft202012Validator

from paysim.domain import cards
from paysim.infra.config import load_settings
from paysim.infra.errors import ConfigError
from paysim.load.html import render_html
from paysim.load.ingress import Failure
from paysim.load.metrics import RunMetrics
from paysim.load.plan import SendRequest, plan_run
from paysim.load.report import RunInfo, TargetInfo, build_report
from paysim.load.runner import LoadRun
from paysim.load.targets.choice import TargetFlags, open_target
from paysim.load.targets.http_target import HttpAnswers, HttpTarget, parse_target_url, read_answer
from paysim.load.targets.kafka_target import Correlation, OutcomeReader, Pending
from paysim.load.targets.pointer import MISSING, parse_pointer
from paysim.load.targets.template import (
    SAMPLE,
    DecisionRule,
    PaymentFields,
    compile_text,
    compile_value,
    load_record_template,
    load_request_template,
)
from paysim.load.thresholds import parse_threshold
from paysim.pipeline.store import DoneEntry
from tests.helpers import assert_one_line_error, run_paysim

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "targets"
FIELDS = PaymentFields(SAMPLE, "pay-1", "idem-1", "run-1")


def write(tmp_path: Path, text: str, name: str = "template.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ JSON pointers


@pytest.mark.parametrize(("pointer", "expected"), [
    ("", {"a": {"b/c": [10, {"~k": "x"}]}, "": 1}),
    ("/a/b~1c/0", 10),
    ("/a/b~1c/1/~0k", "x"),
    ("/", 1),  # the key "" (RFC 6901)
    ("/a/missing", MISSING),
    ("/a/b~1c/2", MISSING),  # past the end
    ("/a/b~1c/01", MISSING),  # a leading zero is no index
    ("/a/b~1c/-", MISSING),
    ("/a/b~1c/0/deeper", MISSING),  # into a number
])
def test_pointer_reads_what_rfc_6901_says(pointer: str, expected: object) -> None:
    document = {"a": {"b/c": [10, {"~k": "x"}]}, "": 1}
    value = parse_pointer(pointer).read(document)
    assert value is MISSING if expected is MISSING else value == expected


@pytest.mark.parametrize("text", ["status", "/a~2b", "/~"])
def test_a_malformed_pointer_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pointer(text)


# ------------------------------------------------------------------ rendering


def test_a_whole_placeholder_keeps_its_type_and_text_is_text() -> None:
    assert compile_text("{amount}", "x")(FIELDS) == 1234
    assert compile_text("{amount_decimal} {currency}", "x")(FIELDS) == "12.34 USD"
    assert compile_text("{exp_month:02d}/{exp_year2:02d}", "x")(FIELDS) == "12/30"
    assert compile_text("{{literal}} {seq}", "x")(FIELDS) == "{literal} 0"
    assert compile_text("plain", "x")(FIELDS) == "plain"


def test_values_render_through_tables_and_arrays() -> None:
    render = compile_value({"a": ["{payment_id}", 3, True, {"k": "{merchant_mcc}"}],
                            "b": 1.5}, "body")
    assert render(FIELDS) == {"a": ["pay-1", 3, True, {"k": "5411"}], "b": 1.5}


@pytest.mark.parametrize(("text", "fragment"), [
    ("{pan}", "unknown field {pan}"),
    ("{payment.seq}", "unknown field"),
    ("{amount!r}", "format spec only"),
    ("open { brace", "braces"),
])
def test_a_bad_placeholder_is_a_config_error(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"body\.x") as raised:
        compile_value({"x": text}, "body")
    assert fragment in str(raised.value)
    assert raised.value.exit_code == 2


def test_the_example_templates_load_and_render(tmp_path: Path) -> None:
    http = load_request_template(EXAMPLES / "http-authorize.toml")
    body = http.body(FIELDS)
    assert body["amount"] == {"value": 1234, "currency": "USD"}
    assert body["card"] == {"number": "4111111111111111", "expiry": "12/30", "cvc": "123"}
    assert http.headers(FIELDS)["Idempotency-Key"] == "idem-1"
    kafka = load_record_template(EXAMPLES / "kafka-authorize.toml")
    assert kafka.value(FIELDS)["request_id"] == "pay-1"
    assert kafka.correlate is not None and kafka.correlate.text == "/request_id"
    assert kafka.key is not None and kafka.key(FIELDS) == "m00000"


HTTP_BASE = """
[request.body]
amount = "{amount}"
[response]
decision = "/result"
"""


@pytest.mark.parametrize(("text", "fragment"), [
    (HTTP_BASE.replace("{amount}", "{amount_cents}"), "unknown field {amount_cents}"),
    (HTTP_BASE.replace("{amount}", "{cvv:05d}"), "format does not fit"),
    (HTTP_BASE + "extra = 1\n", "unknown field `extra`"),
    (HTTP_BASE.replace("/result", "result"), "response.decision"),
    (HTTP_BASE.replace("[request.body]", "[request]\nmethod = 'GET'\n[request.body]"),
     "POST, PUT or PATCH"),
    ("[request\n", "not a TOML template"),
    ("[response]\n", "missing required field `request`"),
])
def test_a_bad_request_template_says_what_is_wrong(tmp_path: Path, text: str,
                                                  fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_request_template(write(tmp_path, text))
    assert fragment in str(raised.value)
    assert "\n" not in str(raised.value)


KAFKA_BASE = """
[record.value]
id = "{payment_id}"
[outcome]
decision = "/ok"
correlate = "/id"
"""


@pytest.mark.parametrize(("text", "fragment"), [
    (KAFKA_BASE.replace('correlate = "/id"', ""), "--correlate"),
    (KAFKA_BASE.replace('id = "{payment_id}"', 'id = "{seq}"'), "never writes {payment_id}"),
    (KAFKA_BASE.replace('decision = "/ok"', ""), "outcome.decision"),
    (KAFKA_BASE + 'match = "seq"\n', "outcome.match"),
])
def test_a_bad_record_template_says_what_is_wrong(tmp_path: Path, text: str,
                                                 fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_record_template(write(tmp_path, text))
    assert fragment in str(raised.value)


def test_the_correlate_flag_beats_the_template(tmp_path: Path) -> None:
    template = load_record_template(write(tmp_path, KAFKA_BASE), correlate="/ref/id")
    assert template.correlate is not None and template.correlate.text == "/ref/id"
    with pytest.raises(ConfigError, match="--correlate"):
        load_record_template(write(tmp_path, KAFKA_BASE), correlate="ref")


# ------------------------------------------------------------------ decisions


def test_a_decision_is_read_by_value_and_type() -> None:
    rule = DecisionRule(parse_pointer("/ok"), (True,), parse_pointer("/why"))
    assert rule.read({"ok": True, "why": "00"}).approved
    assert not rule.read({"ok": 1, "why": 5}).approved  # 1 is not true in JSON
    assert rule.read({"ok": 1, "why": 5}).reason == "5"
    assert rule.read({"ok": False}).reason == "-"


def test_a_reason_never_carries_a_card_number() -> None:
    rule = DecisionRule(parse_pointer("/ok"), (True,), parse_pointer("/why"))
    reason = rule.read({"ok": False, "why": "bad card 4111111111111111"}).reason
    assert not cards.contains_card_number(reason)
    assert "4111111111111111" not in reason


def test_read_answer_turns_every_bad_answer_into_one_failure(tmp_path: Path) -> None:
    template = load_request_template(EXAMPLES / "http-authorize.toml")
    ok = json.dumps({"result": "authorised", "refusal_code": None}).encode()
    refused = json.dumps({"result": "refused", "refusal_code": "51"}).encode()
    assert read_answer(template, 200, ok) == (True, "-")
    assert read_answer(template, 402, refused) == (False, "51")
    card_echo = b"<html>4111111111111111</html>"
    failures = {status_body: read_answer(template, *status_body) for status_body in [
        (500, ok), (200, card_echo), (200, b""), (200, b'{"other": 1}')]}
    kinds = {key: (value.kind if isinstance(value, Failure) else value)
             for key, value in failures.items()}
    assert kinds == {(500, ok): "status 500", (200, card_echo): "not json",
                     (200, b""): "not json", (200, b'{"other": 1}'): "no decision"}
    assert all("4111" not in value.line for value in failures.values()
               if isinstance(value, Failure))


def test_without_a_decision_pointer_the_status_decides(tmp_path: Path) -> None:
    template = load_request_template(write(tmp_path, """
[request.body]
amount = "{amount}"
[response]
statuses = [201, 402, 409]
approved_statuses = [201]
"""))
    assert read_answer(template, 201, b"not json, not read") == (True, "-")
    assert read_answer(template, 409, b"") == (False, "-")
    failure = read_answer(template, 200, b"")
    assert isinstance(failure, Failure) and failure.kind == "status 200"


# ------------------------------------------------------------------ outcome records


def reader(tmp_path: Path) -> tuple[OutcomeReader, Correlation]:
    template = load_record_template(write(tmp_path, KAFKA_BASE + 'reason = "/code"\n'))
    correlation = Correlation()
    return OutcomeReader(None, "outcomes", template, correlation), correlation  # type: ignore[arg-type]


def test_an_outcome_record_is_matched_once_to_its_payment(tmp_path: Path) -> None:
    outcomes, correlation = reader(tmp_path)
    correlation.expect("pay-1", Pending("pay-1", 500, "EUR", 7, 1_000))
    record = json.dumps({"id": "pay-1", "ok": False, "code": "05"}).encode()
    entry = outcomes.outcome(record, 4_000)
    assert entry == DoneEntry("pay-1", "declined", "05", 500, "EUR", 7,
                              {"requested": 1_000, "notified": 4_000})
    assert outcomes.outcome(record, 5_000) is None  # a repeat, or someone else's
    assert outcomes.outcome(json.dumps({"id": "other", "ok": True}).encode(), 5_000) is None


class _Fatal:
    """A consumed message carrying a fatal error (an unusable consumer)."""

    def error(self) -> KafkaError:
        return KafkaError(KafkaError._FATAL, "fenced by a newer instance", fatal=True)


class _FatalConsumer:
    def __init__(self) -> None:
        self.polls = 0

    def poll(self, _timeout: float) -> _Fatal:
        self.polls += 1
        return _Fatal()

    def consume(self, num_messages: int, timeout: float) -> list[_Fatal]:
        return []


def test_a_fatal_kafka_error_ends_the_outcome_reader_with_one_failure(tmp_path: Path) -> None:
    template = load_record_template(write(tmp_path, KAFKA_BASE + 'reason = "/code"\n'))
    consumer = _FatalConsumer()
    outcomes = OutcomeReader(consumer, "outcomes", template, Correlation())  # type: ignore[arg-type]
    entries, failures = outcomes.read()
    assert entries == [] and outcomes.ended
    assert [(f.kind, f.payment_id) for f in failures] == [("outcome topic unreadable", None)]
    assert failures[0].line == ("reading outcomes stopped at a fatal Kafka error: "
                                "fenced by a newer instance")
    assert outcomes.read() == ([], []) and consumer.polls == 1  # read no more


def test_the_collector_counts_an_ended_sources_failure_and_stops() -> None:
    settings = load_settings({}, env={})
    planned = plan_run(settings, SendRequest(count=3))
    run = LoadRun(settings, planned.plan, planned.options)
    run.metrics = RunMetrics(1_000_000)
    run._sent("pay-1", 1_000_100, 1_000_200)
    source = HttpAnswers(ended=True)  # any source that says it can give no more
    failure = Failure("outcome topic unreadable", "reading outcomes stopped: fenced")
    # An outcome read in the same batch as the fatal error still counts.
    read_first = DoneEntry("pay-1", "approved", "00", 500, "EUR", 0,
                           {"requested": 1_000_100, "notified": 1_004_000})
    source.read = lambda: ([read_first], [failure])  # type: ignore[method-assign]
    run._collect(source)  # returns, although no deadline passed
    assert run.metrics.errors == {"outcome topic unreadable": 1}
    assert run.metrics.error_lines["outcome topic unreadable"] == failure.line
    assert run.ledger.outcomes == {"pay-1"} and run.metrics.completed == 1


def test_an_unreadable_outcome_record_is_one_failure(tmp_path: Path) -> None:
    outcomes, correlation = reader(tmp_path)
    correlation.expect("pay-2", Pending("pay-2", 1, "USD", 0, 0))
    not_json = outcomes.outcome(b"\xff card 4111111111111111", 1, partition=2, offset=9)
    assert isinstance(not_json, Failure) and not_json.kind == "unparsable outcome"
    assert "partition 2, offset 9" in not_json.line and "4111" not in not_json.line
    no_id = outcomes.outcome(b'{"ok": true}', 1)
    assert isinstance(no_id, Failure) and no_id.kind == "uncorrelated outcome"
    no_decision = outcomes.outcome(b'{"id": "pay-2"}', 1)
    assert isinstance(no_decision, Failure)
    assert (no_decision.kind, no_decision.payment_id) == ("no decision", "pay-2")


# ------------------------------------------------------------------ flags


@pytest.mark.parametrize(("flags", "fragment"), [
    (TargetFlags(url="http://127.0.0.1:1/a"), "--target needs --request-template"),
    (TargetFlags(request_template="x.toml"), "only with --target"),
    (TargetFlags(concurrency=4), "only with --target"),
    (TargetFlags(to_topic="t", record_template="x.toml"), "--outcome-topic"),
    (TargetFlags(outcome_topic="o"), "only with --to-topic"),
    (TargetFlags(url="http://h/a", to_topic="t"), "one target at a time"),
    (TargetFlags(url="ftp://h/a", request_template=str(EXAMPLES / "http-authorize.toml")),
     "http:// or https://"),
    (TargetFlags(to_topic="t", outcome_topic="t",
                 record_template=str(EXAMPLES / "kafka-authorize.toml")), "same topic"),
])
def test_target_flags_that_do_not_go_together(flags: TargetFlags, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_target(flags, 30)
    assert fragment in str(raised.value)


def test_no_target_flags_no_target() -> None:
    assert open_target(TargetFlags(), 30) is None


def test_a_target_url_keeps_its_path_and_query() -> None:
    address = parse_target_url("http://127.0.0.1:8085/v1/auth?mode=test")
    assert (address.host, address.port, address.path) == ("127.0.0.1", 8085,
                                                           "/v1/auth?mode=test")
    assert parse_target_url("https://example.test/a").port == 443
    with pytest.raises(ConfigError, match="no credentials"):
        parse_target_url("http://user:secret@example.test/a")


def test_a_target_run_refuses_what_only_paysim_does() -> None:
    settings = load_settings({}, env={})
    target = TargetFlags(url="http://127.0.0.1:1/a",
                         request_template=str(EXAMPLES / "http-authorize.toml"))
    planned = plan_run(settings, SendRequest(count=3, target=target))
    assert isinstance(planned.target, HttpTarget)
    assert planned.options.via == "target-http" and planned.options.issuer is None
    for request, fragment in [
        (SendRequest(count=3, target=target, via="http"), "--via"),
        (SendRequest(count=3, target=target, callback_url="http://127.0.0.1:1/"),
         "--callback-url"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            plan_run(settings, request)


def test_send_with_a_bad_template_exits_2_before_sending(tmp_path: Path) -> None:
    template = write(tmp_path, HTTP_BASE.replace("{amount}", "{amount_cents}"))
    # Port 1 would refuse; nothing may get that far.
    result = run_paysim("send", "--target", "http://127.0.0.1:1/a", "--request-template",
                        str(template), "--count", "5", timeout=60)
    assert_one_line_error(result, 2, "unknown field {amount_cents}")


# ------------------------------------------------------------------ the report


def test_a_target_runs_report_counts_errors_apart_and_validates() -> None:
    metrics = RunMetrics(1_000_000)
    for seq, (status, code) in enumerate([("approved", "-"), ("declined", "51"),
                                          ("declined", "R17")]):
        metrics.record_send(1_000_000 + seq, 1_000_100 + seq)
        metrics.record_outcome(DoneEntry(f"p{seq}", status, code, 100, "EUR", seq,
                                         {"requested": 1_000_100, "notified": 1_020_000}),
                               1_000_000 + seq)
    for kind in ("refused", "not json", "refused"):
        metrics.record_send(1_000_000, 1_000_100)
        metrics.record_error(kind, f"first {kind}")
    metrics.record_error("refused", "a later line")
    info = RunInfo(run_id="run-t", seed=1, via="target-http", mode="burst", scenario=None,
                   target_rate=None, stages=[], scheduled=6, lost_ids=[],
                   finished_us=2_000_000,
                   target=TargetInfo(kind="http", address="http://127.0.0.1:1/a",
                                     concurrency=8))
    report = build_report(metrics, info, [parse_threshold("errors < 4", None, {"errors"})])
    Draft202012Validator(json.loads((Path(__file__).resolve().parents[2] / "paysim" / "load"
                                     / "report.schema.json").read_text())
                         ).validate(report.to_dict())
    assert report.outcomes.completed == 3 and report.load.sent == 6
    texts = {row.reason_code: row.reason_text for row in report.outcomes.by_reason}
    assert texts == {"-": "none given", "51": "insufficient funds", "R17": "the target's code"}
    assert report.target is not None and report.target.errors == 4
    assert [(row.kind, row.count, row.first) for row in report.target.by_error] == [
        ("refused", 3, "first refused"), ("not json", 1, "first not json")]
    assert report.thresholds[0].actual == 4 and not report.passed
    assert 'id="target-errors"' in render_html(report)

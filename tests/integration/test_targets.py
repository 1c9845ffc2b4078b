"""`paysim send` against systems that are not paysim, written here: an HTTP authorizer on
127.0.0.1 and a Kafka responder on the suite's broker. The reports' counts, decisions,
errors and latency records are checked against what those systems saw and did."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from paysim.infra.config import Settings, settings_env
from paysim.infra.kafka import client_config
from paysim.infra.topics import ensure_topics
from paysim.load.html import render_html
from paysim.load.plan import SendRequest
from paysim.load.report import RunReport
from paysim.load.run import run_load
from paysim.load.targets.choice import TargetFlags
from tests.helpers import free_port, run_paysim

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "paysim" / "load"
                     / "report.schema.json").read_text())
LIMIT = 5_000  # minor units: up to this the test systems approve, above it they decline
IN_FLIGHT = 4  # the HTTP authorizer holds its first requests until this many are in flight


def approved_count(report: RunReport) -> int:
    return sum(row.count for row in report.outcomes.by_reason if row.status == "approved")


def check_report(report: RunReport, cards_sent: set[str]) -> None:
    """Valid against the schema, and no card number anywhere in it."""
    document = json.dumps(report.to_dict())
    jsonschema.validate(report.to_dict(), SCHEMA)
    assert cards_sent and not [pan for pan in cards_sent if pan in document]


# ---------------------------------------------------------------- HTTP


@dataclass
class Authorizer:
    """What the HTTP test system saw and answered, by paysim's seq."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: dict[int, str] = field(default_factory=dict)  # approved / declined / garbage
    cards: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    barrier: threading.Barrier = field(
        default_factory=lambda: threading.Barrier(IN_FLIGHT, timeout=10))
    held: int = 0


def authorizer_server(state: Authorizer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                hold = state.held < IN_FLIGHT
                state.held += 1
            if hold:  # only passes once IN_FLIGHT requests are here at the same time
                state.barrier.wait()
            seq = body["seq"]
            if seq % 10 == 9:
                answer, status, data = "garbage", 200, b"<html>busy</html>"
            elif body["amount"]["value"] <= LIMIT:
                answer, status, data = "approved", 200, b'{"result": "authorised"}'
            else:
                answer, status, data = "declined", 402, b'{"result": "refused", "code": "51"}'
            with state.lock:
                state.answers[seq] = answer
                state.cards.add(body["card"]["number"])
                state.keys.add(self.headers["Idempotency-Key"])
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


HTTP_TEMPLATE = """
[request.headers]
Idempotency-Key = "{idempotency_key}"
[request.body]
seq = "{seq}"
reference = "{payment_id}"
amount = { value = "{amount}", currency = "{currency}" }
card = { number = "{card_number}", expiry = "{exp_month:02d}{exp_year2:02d}", cvc = "{cvv}" }
[response]
statuses = [200, 402]
decision = "/result"
approved = ["authorised"]
reason = "/code"
"""


@pytest.fixture
def authorizer() -> Iterator[tuple[Authorizer, str]]:
    state = Authorizer()
    server = authorizer_server(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1/authorize"
    finally:
        server.shutdown()
        server.server_close()


def test_send_target_drives_an_http_authorizer(settings: Settings, tmp_path: Path,
                                               authorizer: tuple[Authorizer, str]) -> None:
    state, url = authorizer
    template = tmp_path / "http.toml"
    template.write_text(HTTP_TEMPLATE)
    report = run_load(settings, SendRequest(
        count=80, rate=80, seed=3, timeout=10,
        thresholds=("p99_ms < 5000", "errors == 8"),
        target=TargetFlags(url=url, request_template=str(template), concurrency=16)))

    answers = list(state.answers.values())
    assert len(answers) == 80 and report.load.sent == 80
    assert state.barrier.broken is False  # IN_FLIGHT requests were in flight at once
    assert len(state.keys) == 80  # a fresh idempotency key each
    garbage = answers.count("garbage")
    assert garbage == 8
    assert report.outcomes.completed == 80 - garbage and report.outcomes.lost == 0
    assert approved_count(report) == answers.count("approved") > 0
    declined = [row for row in report.outcomes.by_reason if row.status == "declined"]
    assert [(row.reason_code, row.count) for row in declined] == [
        ("51", answers.count("declined"))]
    assert report.via == "target-http"
    target = report.target
    assert target is not None and target.kind == "http" and target.concurrency == 16
    assert target.errors == garbage
    assert [(row.kind, row.count) for row in target.by_error] == [("not json", garbage)]
    assert "audit" not in target.by_error[0].first and "not applicable" in target.audit
    assert report.latency.end_to_end.count == report.outcomes.completed
    assert report.latency.stages == {}
    assert sum(second.completed for second in report.timeline) == report.outcomes.completed
    assert report.passed, report.thresholds
    check_report(report, state.cards)
    page = render_html(report)
    assert 'id="target-errors"' in page and "not applicable" in page


def test_a_target_that_refuses_connections_is_counted_as_errors(settings: Settings,
                                                               tmp_path: Path) -> None:
    template = tmp_path / "http.toml"
    template.write_text(HTTP_TEMPLATE)
    url = f"http://127.0.0.1:{free_port()}/v1/authorize"  # nothing listens there
    report = run_load(settings, SendRequest(
        count=6, seed=3, timeout=5, target=TargetFlags(url=url, request_template=str(template))))
    assert report.load.sent == 6
    assert (report.outcomes.completed, report.outcomes.lost) == (0, 0)
    assert report.target is not None and report.target.errors == 6
    assert [(row.kind, row.count) for row in report.target.by_error] == [("refused", 6)]
    assert report.target.by_error[0].first == f"{url} refused the connection"


def test_the_cli_reports_a_target_and_its_errors_in_one_line_each(
        settings: Settings, tmp_path: Path,
        authorizer: tuple[Authorizer, str]) -> None:
    state, url = authorizer
    template = tmp_path / "http.toml"
    template.write_text(HTTP_TEMPLATE)
    result = run_paysim("send", "--target", url, "--request-template", str(template),
                        "--count", "20", "--seed", "4", "--json", env=settings_env(settings),
                        timeout=120)
    assert result.returncode == 1, result.stderr  # the two answers that are not JSON
    report = json.loads(result.stdout)
    assert report["target"]["errors"] == 2 and report["outcomes"]["completed"] == 18
    error_lines = [line for line in result.stderr.splitlines() if "errors (" in line]
    assert error_lines == ["2 errors (not json): answered 200 with a body that is not JSON "
                           "(17 bytes)"]
    assert "Traceback" not in result.stderr
    assert not [pan for pan in state.cards if pan in result.stdout + result.stderr]


# ---------------------------------------------------------------- Kafka


@dataclass
class Responder:
    """The Kafka test system: reads payments from its topic, answers most of them."""

    settings: Settings
    requests: str
    outcomes: str
    stop: threading.Event = field(default_factory=threading.Event)
    approved: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)  # never answered: lost
    cards: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # the test reports it
            self.failures.append(repr(exc))

    def _serve(self) -> None:
        consumer = Consumer(client_config(self.settings, **{
            "group.id": f"responder-{uuid.uuid4()}", "enable.auto.commit": False}))
        partitions = consumer.list_topics(self.requests, timeout=10).topics[self.requests]
        consumer.assign([TopicPartition(self.requests, p, OFFSET_BEGINNING)
                         for p in partitions.partitions])
        producer = Producer(client_config(self.settings, **{"linger.ms": 1}))
        garbage_sent = False
        try:
            while not self.stop.is_set():
                first = consumer.poll(0.2)  # consume(n, timeout) would wait for n records
                if first is None:
                    continue
                for message in [first, *consumer.consume(num_messages=100, timeout=0)]:
                    if message.error() is not None:
                        continue
                    record = json.loads(message.value())
                    assert message.headers() == [("event-type", b"authorization.requested")]
                    self.cards.add(record["pan"])
                    if not garbage_sent:  # an outcome record that does not parse
                        producer.produce(self.outcomes, b"{not json")
                        garbage_sent = True
                    if record["seq"] % 7 == 3:
                        self.skipped.add(record["ref"])
                        continue
                    ok = record["amount"] <= LIMIT
                    (self.approved if ok else self.declined).add(record["ref"])
                    producer.produce(self.outcomes, json.dumps(
                        {"meta": {"ref": record["ref"]}, "status": "OK" if ok else "NO",
                         "code": "00" if ok else "51"}).encode())
                producer.flush(5)
        finally:
            producer.flush(5)
            consumer.close()


KAFKA_TEMPLATE = """
[record]
key = "{merchant_id}"
[record.headers]
event-type = "authorization.requested"
[record.value]
ref = "{payment_id}"
seq = "{seq}"
pan = "{card_number}"
amount = "{amount}"
currency = "{currency}"
[outcome]
decision = "/status"
approved = ["OK"]
reason = "/code"
"""


def test_send_to_topic_drives_a_kafka_consumer_and_lists_the_lost(
        local_stack, settings: Settings, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    requests, outcomes = f"target-requests-{suffix}", f"target-outcomes-{suffix}"
    ensure_topics(settings, [requests, outcomes])
    template = tmp_path / "kafka.toml"
    template.write_text(KAFKA_TEMPLATE)
    responder = Responder(settings, requests, outcomes)
    thread = threading.Thread(target=responder.run, daemon=True)
    thread.start()
    try:
        report = run_load(settings, SendRequest(
            count=50, rate=50, seed=9, timeout=4, thresholds=("errors == 1",),
            target=TargetFlags(to_topic=requests, record_template=str(template),
                               outcome_topic=outcomes, correlate="/meta/ref")))
    finally:
        responder.stop.set()
        thread.join(15)
    assert not responder.failures

    answered = responder.approved | responder.declined
    assert report.load.sent == 50 and len(answered | responder.skipped) == 50
    assert responder.skipped and report.outcomes.lost == len(responder.skipped)
    assert set(report.outcomes.lost_ids) == responder.skipped
    assert report.outcomes.completed == len(answered)
    assert approved_count(report) == len(responder.approved)
    codes = {(row.status, row.reason_code): row.count for row in report.outcomes.by_reason}
    assert codes == {key: n for key, n in {("approved", "00"): len(responder.approved),
                                           ("declined", "51"): len(responder.declined)}.items()
                     if n}
    target = report.target
    assert target is not None and report.via == "target-kafka"
    assert (target.address, target.outcome_topic) == (requests, outcomes)
    assert target.correlate == "/meta/ref = {payment_id}"
    assert [(row.kind, row.count) for row in target.by_error] == [("unparsable outcome", 1)]
    assert report.latency.end_to_end.count == len(answered)
    assert report.latency.end_to_end.max_ms is not None and report.latency.end_to_end.max_ms > 0
    assert report.passed
    check_report(report, responder.cards)

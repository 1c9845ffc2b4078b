"""The whole pipeline as a user runs it: `paysim run-all --detach`, `send`, `status`, `stop`;
every test twice, on a single redis-server and on a Redis Cluster (issue 15: the pipeline runs
unchanged on it)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import stripe
from confluent_kafka import Producer

from paysim.domain import decisions, webhooks
from paysim.domain.messages import Codec, DeadLetter, PaymentRequested, SchemaError
from paysim.infra.config import Settings, settings_env
from paysim.infra.kafka import client_config, read_topic
from paysim.infra.secrets import load_keys
from paysim.infra.waiting import wait_until
from paysim.load.generator import Mix, PaymentStream, build_population
from paysim.pipeline import store
from paysim.stack.process import is_alive
from tests.helpers import free_port, run_paysim
from tests.integration.pipeline_helpers import (
    injected,
    paysim,
    pipeline_on,
    reason_counts,
    run_done_entries,
    send,
)


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def pipeline(request: pytest.FixtureRequest, local_stack,
             service_flags: dict[str, object]) -> Iterator[Settings]:
    """The services on the suite's redis-server, then on the session's Redis Cluster (pytest
    runs the module's tests once per store, the pipeline started once for each)."""
    flags = (service_flags if request.param == "redis"
             else request.getfixturevalue("redis_cluster"))
    with pipeline_on(flags) as settings:
        yield settings


def test_thousand_payments_get_exactly_the_injected_outcomes(pipeline: Settings) -> None:
    summary = send(pipeline, "--count", "1000", "--seed", "424242")

    assert summary["outcomes"]["completed"] == 1000
    assert summary["outcomes"]["lost"] == 0
    expected = injected(424242, 1000, pipeline)
    assert reason_counts(summary) == dict(expected)
    # Every documented test card and every card check shows up with its reason code.
    assert set(decisions.TEST_CARDS.values()) | {"14", "54", "N7", "13", "12"} <= set(expected)
    assert summary["latency"]["end_to_end"]["count"] == 1000


def test_the_same_seed_gives_the_same_outcomes(pipeline: Settings) -> None:
    first = send(pipeline, "--count", "300", "--seed", "77")
    second = send(pipeline, "--count", "300", "--seed", "77")
    assert first["run_id"] != second["run_id"]
    assert reason_counts(first) == reason_counts(second)
    assert first["outcomes"]["approved_amounts"] == second["outcomes"]["approved_amounts"]


def test_status_shows_the_four_stages_of_a_delivered_payment(pipeline: Settings) -> None:
    summary = send(pipeline, "--count", "50", "--seed", "5", "--bad-share", "0",
                   "--test-card-share", "0")
    entry = run_done_entries(pipeline, summary["run_id"])[0]

    result = paysim(pipeline, "status", entry.payment_id, "--json")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["status"] == "approved"
    assert [row["stage"] for row in shown["timeline"]] == [
        "requested", "authorized", "processed", "notified"]
    assert all(row["ms_since_previous"] >= 0 for row in shown["timeline"][1:])
    table = paysim(pipeline, "status", entry.payment_id)
    assert "notified" in table.stdout and "approved" in table.stdout


def test_status_prints_a_hostile_merchant_name_literally(pipeline: Settings) -> None:
    """A merchant name from an HTTP client is shown as sent: no markup error, no hidden link, no
    escape sequence reaching the terminal (its ESC shown as \\x1b)."""
    name = "Shop [/bold] end [link=http://x]y[/link] \u001b[31m"
    body = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099,
            "cvv": "123", "amount": 1250, "currency": "USD",
            "merchant": {"id": "m-[red]1", "name": name, "mcc": "5411", "country": "US"}}
    request = urllib.request.Request(
        f"http://{pipeline.http.host}:{pipeline.http.port}/authorize",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        payment_id = json.loads(answer.read())["payment_id"]
    client = store.connect(pipeline)
    try:
        assert wait_until(lambda: store.read_outcome(client, payment_id) is not None, timeout=60)
    finally:
        client.close()

    result = run_paysim("status", payment_id, env={**settings_env(pipeline), "COLUMNS": "300"})

    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    shown = "Shop [/bold] end [link=http://x]y[/link] \\x1b[31m"
    assert f"merchant {shown} (m-[red]1, MCC 5411, US)" in result.stdout, result.stdout


def test_status_of_an_unknown_payment_is_one_line_and_exit_1(pipeline: Settings) -> None:
    result = paysim(pipeline, "status", str(uuid.uuid4()))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no payment" in result.stderr


def test_poison_messages_go_to_the_dead_letter_topic_and_the_pipeline_goes_on(
    pipeline: Settings,
) -> None:
    marker = uuid.uuid4().hex
    topics = pipeline.topics
    poison = {
        topics.requested: f"not json {marker}".encode(),
        topics.authorized: json.dumps({"v": 1, "marker": marker}).encode(),
        # Over 750 KB: its dead letter must still fit in a Kafka record.
        topics.results: b"\xff\xfe" + marker.encode() + b"x" * 800_000,
    }
    sealed_garbage = json.dumps({  # fits the schema; the card block does not decrypt
        "payment_id": str(uuid.uuid4()), "run_id": marker, "amount": 100, "currency": "USD",
        "merchant": {"id": "m1", "name": "x", "mcc": "5411", "country": "US"},
        "stages": {"requested": 1}, "card": base64.b64encode(b"x" * 40).decode(),
    }).encode()
    clear_card = json.dumps({"card_number": "4111111111111111", "cvv": "737",
                             "marker": marker}).encode()
    # Fits the processor's schema, but no authorizer would pass on a currency like this.
    bad_currency = json.dumps({
        "payment_id": str(uuid.uuid4()), "run_id": marker, "amount": 100, "currency": "ZZZ",
        "merchant": {"id": "m1", "name": "x", "mcc": "5411", "country": "US"},
        "stages": {"requested": 1}, "token": "tok_x", "masked_pan": "411111******1111",
        "network": "visa", "exp_month": 1, "exp_year": 2040,
    }).encode()
    processor_pid = ps(pipeline)["processor-0"]["pid"]
    producer = Producer(client_config(pipeline))
    for topic, value in poison.items():
        producer.produce(topic, value=value)
    producer.produce(topics.requested, value=sealed_garbage)
    producer.produce(topics.requested, value=clear_card)
    producer.produce(topics.authorized, value=bad_currency)
    assert producer.flush(30) == 0

    codec = Codec(DeadLetter)
    letters: dict[str, DeadLetter] = {}  # by sha256 of the original
    wanted = {hashlib.sha256(v).hexdigest(): v
              for v in (*poison.values(), sealed_garbage, clear_card, bad_currency)}

    def all_dead_lettered() -> bool:
        for raw in read_topic(pipeline, topics.dlq):
            letter = codec.decode(raw)
            letters[letter.original_sha256] = letter
        return wanted.keys() <= letters.keys()

    assert wait_until(all_dead_lettered, timeout=60, interval=0.5)
    for topic, value in poison.items():
        letter = letters[hashlib.sha256(value).hexdigest()]
        assert letter.source_topic == topic
        assert letter.reason
        assert letter.original_size == len(value)
    big = letters[hashlib.sha256(poison[topics.results]).hexdigest()]
    assert big.truncated and len(base64.b64decode(big.original)) == 64 * 1024
    assert "decrypt" in letters[hashlib.sha256(sealed_garbage).hexdigest()].reason
    # The edge topic's dead letters withhold the original: it may hold a clear PAN.
    withheld = letters[hashlib.sha256(clear_card).hexdigest()]
    assert withheld.original is None and withheld.key is None
    assert "unknown currency" in letters[hashlib.sha256(bad_currency).hexdigest()].reason
    assert ps(pipeline)["processor-0"]["pid"] == processor_pid, "the processor kept running"

    after = send(pipeline, "--count", "100", "--seed", "9")
    assert after["outcomes"]["completed"] == 100


def _pan_hits(blob: bytes, pans: set[bytes]) -> list[bytes]:
    return [pan for pan in pans if pan in blob]


def _stored(client: store.Client, chunk: int = 500) -> Iterator[tuple[bytes, bytes]]:
    """Every key in Redis with what it holds as bytes (strings, hashes' and streams' fields),
    read in pipelined rounds: key by key, a cluster's round trips made this test slow."""
    keys = list(client.scan_iter(count=1000))
    for begin in range(0, len(keys), chunk):
        part = keys[begin:begin + chunk]
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.type(key)
        kinds = [kind.decode() for kind in pipe.execute()]
        pipe = client.pipeline(transaction=False)
        read = {"string": pipe.get, "hash": pipe.hgetall, "stream": pipe.xrange}
        shown = [(key, kind) for key, kind in zip(part, kinds, strict=True) if kind in read]
        yield from ((key, b"") for key, kind in zip(part, kinds, strict=True)
                    if kind not in read)  # sets, lists: their key alone is checked
        for key, kind in shown:
            read[kind](key)
        for (key, kind), value in zip(shown, pipe.execute(), strict=True):
            if kind == "hash":
                value = b" ".join(k + b"=" + v for k, v in value.items())
            elif kind == "stream":
                value = b" ".join(b" ".join(k + b"=" + v for k, v in fields.items())
                                  for _, fields in value)
            yield key, value or b""


def test_no_pan_or_cvv_leaves_the_edge(pipeline: Settings) -> None:
    seed, count = 31337, 500
    send(pipeline, "--count", str(count), "--seed", str(seed))
    stream = PaymentStream(build_population(seed), seed, Mix(), pipeline.issuer.max_amount_usd)
    pans = {p.card.number.encode() for p in stream.take(count)}
    pans |= {pan.encode() for pan in decisions.TEST_CARDS}

    topics = pipeline.topics
    codec, requested = Codec(DeadLetter), Codec(PaymentRequested)
    for topic in (topics.requested, topics.authorized, topics.results, topics.notifications,
                  topics.dlq):
        for value in read_topic(pipeline, topic):
            if topic == topics.requested:
                # The edge topic takes whatever a client writes (other tests write malformed
                # records there on purpose); what paysim itself sends must be sealed.
                try:
                    requested.decode(value)
                except SchemaError:
                    continue
            if topic == topics.dlq:  # what a dead letter carries, decoded
                letter = codec.decode(value)
                value += base64.b64decode(letter.original or "")
            assert not _pan_hits(value, pans), f"a PAN on {topic}"
            assert b'"cvv"' not in value, f"a CVV field on {topic}"

    client = store.connect(pipeline)
    try:
        for key, blob in _stored(client):
            assert not _pan_hits(key + blob, pans), f"a PAN in Redis key {key!r}"
            # A field named cvv (as a hash/stream field or a JSON key); the reason text
            # "CVV check failed" is not one.
            assert b" cvv=" not in b" " + blob.lower(), f"a CVV field in Redis key {key!r}"
            assert b'"cvv"' not in blob.lower(), f"a CVV field in Redis key {key!r}"
    finally:
        client.close()

    logs = pipeline.services.dir / "logs"
    for log in logs.glob("*.log"):
        assert not _pan_hits(log.read_bytes(), pans), f"a PAN in {log}"


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def notifications() -> list[bytes]:
    """The payment.approved and payment.declined deliveries received so far."""
    return [body for _, body in _Receiver.received
            if json.loads(body)["type"] in ("payment.approved", "payment.declined")]


def test_signed_webhooks_reach_the_client_and_verify(pipeline: Settings) -> None:
    _Receiver.received.clear()  # the test runs once per store: only this run's deliveries
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        summary = send(pipeline, "--count", "20", "--seed", "8", "--callback-url", url)
        assert summary["outcomes"]["completed"] == 20
        # One notification per payment (each approved one's capture comes as an event too).
        assert wait_until(lambda: len(notifications()) >= 20, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    # The secret as a receiver has it: the text in the secrets file, Stripe's format.
    secret = json.loads(pipeline.secrets.file.read_text())["webhook_secret"]
    assert secret.startswith("whsec_")
    assert load_keys(pipeline).webhook_secret == secret.encode()
    event_ids = set()
    for headers, body in _Receiver.received:
        # Stripe's own library takes every delivery, and so does paysim's check, on either
        # header (they carry the same signature).
        event = stripe.Webhook.construct_event(
            body, headers.get(webhooks.STRIPE_SIGNATURE_HEADER), secret)
        assert headers[webhooks.SIGNATURE_HEADER] == headers[webhooks.STRIPE_SIGNATURE_HEADER]
        webhooks.verify(body, headers.get(webhooks.SIGNATURE_HEADER), secret)
        note = event.data.object
        assert event.object == "event"
        assert headers["Paysim-Event-Id"] == event.id == note.event_id
        if event.type == "payment.captured":
            continue  # an automatic capture's event of the payment's life
        assert event.type == f"payment.{note.status}"
        event_ids.add(event.id)
    assert len(event_ids) == 20
    client = store.connect(pipeline)
    try:
        ids = [e.payment_id for e in run_done_entries(pipeline, summary["run_id"])]

        def webhook_status(payment_id: str) -> str | None:
            stored = store.read_outcome(client, payment_id)
            return stored.webhook.status if stored and stored.webhook else None

        def delivered() -> bool:
            return {webhook_status(i) for i in ids} == {"delivered"}

        assert wait_until(delivered, timeout=30)
    finally:
        client.close()


def ps(settings: Settings) -> dict[str, dict]:
    result = paysim(settings, "ps", "--json")
    return {row["name"]: row for row in json.loads(result.stdout)["services"]}


def test_a_killed_service_is_restarted_and_nothing_is_lost(pipeline: Settings) -> None:
    before = ps(pipeline)["processor-0"]
    assert before["state"] == "up"
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> bool:
        now = ps(pipeline)["processor-0"]
        return now["state"] == "up" and now["pid"] != before["pid"]

    assert wait_until(back, timeout=60, interval=0.5)
    said = (pipeline.services.dir / "run-all.log").read_text()
    assert f"processor-0 exited with code -{signal.SIGKILL.value}" in said
    assert "processor-0 restarted" in said
    summary = send(pipeline, "--count", "200", "--seed", "11")
    assert summary["outcomes"]["completed"] == 200
    assert reason_counts(summary) == dict(injected(11, 200, pipeline))


def test_send_through_the_http_api_gets_the_injected_outcomes(pipeline: Settings) -> None:
    summary = send(pipeline, "--count", "300", "--seed", "12", "--via", "http")
    assert summary["outcomes"]["completed"] == 300
    assert reason_counts(summary) == dict(injected(12, 300, pipeline))


def test_payments_without_an_outcome_are_listed_with_exit_1(pipeline: Settings) -> None:
    processor = ps(pipeline)["processor-0"]["pid"]
    stopped = threading.Event()

    def beat_for_the_stopped_processor() -> None:
        # A processor that is stuck but still beats: without this, a send slow to start
        # (a loaded machine) finds its heartbeat stale and refuses to run at all.
        client = store.connect(pipeline)
        key = store.heartbeat_key("processor", 0)
        try:
            while not stopped.wait(0.5):
                client.hset(key, "seen_at", time.time())
                client.expire(key, store.HEARTBEAT_TTL_S)
        finally:
            client.close()

    os.kill(processor, signal.SIGSTOP)  # authorized payments now wait at the processor
    beater = threading.Thread(target=beat_for_the_stopped_processor, daemon=True)
    beater.start()
    try:
        result = paysim(pipeline, "send", "--count", "20", "--seed", "13", "--bad-share", "0",
                        "--test-card-share", "0", "--timeout", "2")
    finally:
        stopped.set()
        beater.join()
        os.kill(processor, signal.SIGCONT)
    assert result.returncode == 1
    assert "20 payments had no outcome after 2 s" in result.stderr
    assert "Traceback" not in result.stderr


def test_stop_leaves_no_service_running(pipeline: Settings) -> None:
    pids = [row["pid"] for row in ps(pipeline).values()]
    assert all(pids)

    result = paysim(pipeline, "stop")

    assert result.returncode == 0, result.stderr
    assert "stopped paysim services" in result.stdout
    assert not [pid for pid in pids if is_alive(pid)]
    assert paysim(pipeline, "ps", "--json").returncode == 1
    again = paysim(pipeline, "stop")
    assert again.returncode == 0 and "nothing to stop" in again.stdout

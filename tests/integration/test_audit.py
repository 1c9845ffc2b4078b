"""`paysim audit` finds nothing wrong after a clean run, and finds what a test breaks."""

from __future__ import annotations

import json

import redis
from confluent_kafka import Producer

from paysim.domain import ledger
from paysim.domain.messages import encode
from paysim.infra.config import Settings, settings_env
from paysim.infra.kafka import client_config
from paysim.pipeline import ledger_store, store
from tests.helpers import run_paysim
from tests.integration.pipeline_helpers import paysim, run_done_entries, send


def audit(settings: Settings, *args: str) -> tuple[int, dict]:
    result = paysim(settings, "audit", "--json", *args)
    return result.returncode, json.loads(result.stdout)


def test_a_clean_run_reconciles(pipeline: Settings) -> None:
    run = send(pipeline, "--count", "500", "--seed", "21")["run_id"]

    code, report = audit(pipeline, "--run", run)

    assert code == 0, report
    assert report["sent"] == 500 and report["outcomes"] == 500
    assert report["lost_count"] == report["doubled_count"] == 0
    assert report["ledger_mismatches"] == [] and report["ledgers_checked"] > 0
    assert report["records_checked"] > 0 and report["unbalanced"] == {}
    # Money went from cards to merchants and fee income, and nowhere else.
    for currency, kinds in report["balances"].items():
        assert sum(kinds.values()) == 0, currency
        assert kinds["cards"] < 0 < kinds["merchants pending"]


def test_a_double_debit_and_a_lost_outcome_are_found(pipeline: Settings) -> None:
    run = send(pipeline, "--count", "200", "--seed", "22", "--bad-share", "0",
               "--test-card-share", "0")["run_id"]
    client = redis.Redis.from_url(pipeline.redis_url)
    try:
        entries = run_done_entries(pipeline, run)
        approved = next(e for e in entries if e.status == "approved")
        stored = store.read_outcome(client, approved.payment_id)
        assert stored is not None and stored.outcome.token is not None
        outcome = stored.outcome
        book = ledger_store.card_key(run, outcome.token)
        merchant = ledger.merchant_pending(outcome.merchant.id)
        # The same payment debited a second time, in a balanced transfer: the book still
        # sums to zero, but no longer matches the card's payments.
        client.hincrby(book, f"p|{outcome.currency}|card", -outcome.amount)
        client.hincrby(book, f"p|{outcome.currency}|{merchant}", outcome.amount)
        # Another card's book given money from nowhere.
        other = next(store.read_outcome(client, e.payment_id) for e in entries
                     if e.status == "approved" and e.payment_id != approved.payment_id)
        assert other is not None and other.outcome.token != outcome.token
        client.hincrby(ledger_store.card_key(run, other.outcome.token),
                       f"p|{other.outcome.currency}|card", 1)
        # And another payment's outcome gone.
        gone = next(e for e in entries if e.payment_id != approved.payment_id)
        client.delete(store.outcome_key(gone.payment_id))
    finally:
        client.close()

    code, report = audit(pipeline, "--run", run)

    assert code == 1
    assert report["lost"] == [gone.payment_id]
    found = {(m["token"], m["what"]) for m in report["ledger_mismatches"]}
    assert any(token == outcome.token and what.startswith("card owes") for token, what in found)
    assert any(token == other.outcome.token and what.startswith("book does not balance")
               for token, what in found)
    assert report["unbalanced"] == {other.outcome.currency: 1}
    table = paysim(pipeline, "audit", "--run", run)
    assert table.returncode == 1 and "FAIL" in table.stdout


def test_a_doubled_outcome_is_found(pipeline: Settings) -> None:
    run = send(pipeline, "--count", "50", "--seed", "24")["run_id"]
    doubled = run_done_entries(pipeline, run)[0].payment_id
    client = redis.Redis.from_url(pipeline.redis_url)
    try:
        stored = store.read_outcome(client, doubled)
    finally:
        client.close()
    assert stored is not None
    # The same payment's outcome a second time on the results topic, as a service that
    # lost its transaction fencing would write it.
    producer = Producer(client_config(pipeline))
    producer.produce(pipeline.topics.results, key=doubled, value=encode(stored.outcome))
    assert producer.flush(30) == 0

    code, report = audit(pipeline, "--run", run)
    table = paysim(pipeline, "audit", "--run", run)

    assert code == 1
    assert report["doubled"] == [doubled] and report["doubled_count"] == 1
    assert report["disagreeing_count"] == report["lost_count"] == 0
    assert report["results_records"] == 51
    assert table.returncode == 1 and f"doubled (first 20): {doubled}" in table.stdout


def test_redis_disagreeing_with_the_results_topic_is_found(pipeline: Settings) -> None:
    run = send(pipeline, "--count", "50", "--seed", "25")["run_id"]
    entries = run_done_entries(pipeline, run)
    flipped = {"approved": "declined", "declined": "approved"}
    by_hash, by_result = entries[0], entries[1]
    client = redis.Redis.from_url(pipeline.redis_url)
    try:
        # One payment's outcome hash, another's payment_result_<id>, changed after the fact.
        client.hset(store.outcome_key(by_hash.payment_id), "status", flipped[by_hash.status])
        client.set(store.result_key(by_result.payment_id), flipped[by_result.status])
    finally:
        client.close()

    code, report = audit(pipeline, "--run", run)
    table = paysim(pipeline, "audit", "--run", run)

    assert code == 1
    assert sorted(report["disagreeing"]) == sorted([by_hash.payment_id, by_result.payment_id])
    assert report["disagreeing_count"] == 2 and report["doubled_count"] == 0
    assert table.returncode == 1
    assert by_hash.payment_id in table.stdout and by_result.payment_id in table.stdout


def test_pci_scan_is_clean_after_a_run_and_finds_a_planted_pan(pipeline: Settings) -> None:
    send(pipeline, "--count", "300", "--seed", "23")
    code, report = audit(pipeline, "--pci")
    assert code == 0, report["findings"][:5]
    assert report["scanned"]["records"] > 0 and report["scanned"]["redis keys"] > 0

    client = redis.Redis.from_url(pipeline.redis_url)
    try:
        client.set("paysim:test:leak", "card 4111111111111111 left here")
        code, report = audit(pipeline, "--pci")
        table = paysim(pipeline, "audit", "--pci")
    finally:
        client.delete("paysim:test:leak")
    assert code == 1
    assert {"where": "redis paysim:test:leak", "what": "PAN-like 411111******1111"} in (
        report["findings"])
    assert table.returncode == 1
    assert "4111111111111111" not in table.stdout + table.stderr  # never shown in clear


def test_pci_scan_prints_card_numbers_in_key_names_and_values_only_masked(
        pipeline: Settings) -> None:
    """A card number in a Redis key's name is as much a finding as one in its value, and the
    key is where the finding is: the audit shows it masked (table and JSON), and shows
    `paysim:ledger:...` as text, not as the :ledger: emoji."""
    client = redis.Redis.from_url(pipeline.redis_url)
    try:
        client.set("paysim:idem:5105105105105100", "card 4111111111111111")
        client.hset("paysim:ledger:5555555555554444", "debits", "1")
        code, report = audit(pipeline, "--pci")
        table = run_paysim("audit", "--pci", env={**settings_env(pipeline), "COLUMNS": "300"})
    finally:
        client.delete("paysim:idem:5105105105105100", "paysim:ledger:5555555555554444")

    assert code == 1 and table.returncode == 1, table.stderr
    findings = report["findings"]
    assert {"where": "redis key paysim:idem:510510******5100",
            "what": "PAN-like 510510******5100"} in findings
    assert {"where": "redis paysim:idem:510510******5100",
            "what": "PAN-like 411111******1111"} in findings
    assert {"where": "redis key paysim:ledger:555555******4444",
            "what": "PAN-like 555555******4444"} in findings
    printed = json.dumps(report) + table.stdout + table.stderr
    for pan in ("5105105105105100", "4111111111111111", "5555555555554444"):
        assert pan not in printed
    assert "redis key paysim:idem:510510******5100" in table.stdout
    assert "redis key paysim:ledger:555555******4444" in table.stdout

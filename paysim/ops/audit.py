"""`paysim audit`: did every payment get exactly one outcome, and was none settled twice?
`paysim audit --pci`: is there card data anywhere past the edge?

Reconciliation reads what was sent from payments.requested (its source of truth: the card is
sealed, the run id and amount are not), the final outcomes from payments.results and from
Redis, and each card's ledger. Run it within the outcome TTL (one hour by default).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from paysim.domain import cards
from paysim.domain.messages import (
    Codec,
    DeadLetter,
    PaymentOutcome,
    PaymentRequested,
    SchemaError,
    now_us,
)
from paysim.infra.config import Settings, TopicSettings
from paysim.infra.kafka import read_topic
from paysim.ops import ledger_checks
from paysim.pipeline import ledger_store, settlement_store, store

LISTED = 20  # ids listed per finding; the counts are complete


@dataclass
class LedgerMismatch:
    """One thing in a card's book or its payments' records that does not add up."""

    run_id: str
    token: str
    payment_id: str | None  # None: the card's book as a whole
    what: str


@dataclass
class AuditReport:
    run_id: str | None
    runs: int = 0
    sent: int = 0
    outcomes: int = 0  # sent payments with an outcome in Redis
    results_records: int = 0
    lost: list[str] = field(default_factory=list)  # sent, no outcome in Redis
    lost_count: int = 0
    doubled: list[str] = field(default_factory=list)  # more than one result record
    doubled_count: int = 0
    disagreeing: list[str] = field(default_factory=list)  # Redis and results topic differ
    disagreeing_count: int = 0
    ledger_mismatches: list[LedgerMismatch] = field(default_factory=list)
    ledger_mismatch_count: int = 0
    ledgers_checked: int = 0
    records_checked: int = 0
    # Per currency, each account kind's balance over every book checked ("card",
    # "merchant pending", "interchange income", ...) and their sum, which must be zero.
    balances: dict[str, dict[str, int]] = field(default_factory=dict)
    unbalanced: dict[str, int] = field(default_factory=dict)  # currency -> non-zero sum
    holds_open: int = 0  # held and within their TTL
    holds_overdue: list[str] = field(default_factory=list)  # past their TTL, still held
    settlement_batches: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost_count or self.doubled_count or self.disagreeing_count
                    or self.ledger_mismatch_count or self.unbalanced or self.holds_overdue)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _decode_all(settings: Settings, topic: str, codec: Codec) -> Iterator[Any]:
    for value in read_topic(settings, topic):
        try:
            yield codec.decode(value)
        except SchemaError:
            continue  # malformed input; the services dead-lettered it


def reconcile(settings: Settings, run_id: str | None = None) -> AuditReport:
    # Redis first: a Redis that does not answer fails the audit before the topics are read.
    client = store.connect_answering(settings)
    try:
        return _reconcile(settings, client, run_id)
    finally:
        client.close()


def _reconcile(settings: Settings, client: redis.Redis, run_id: str | None) -> AuditReport:
    report = AuditReport(run_id=run_id)
    sent: dict[str, PaymentRequested] = {}
    for message in _decode_all(settings, settings.topics.requested, Codec(PaymentRequested)):
        if run_id is None or message.run_id == run_id:
            sent.setdefault(message.payment_id, message)
    results: dict[str, list[PaymentOutcome]] = defaultdict(list)
    for outcome in _decode_all(settings, settings.topics.results, Codec(PaymentOutcome)):
        if outcome.payment_id in sent:
            results[outcome.payment_id].append(outcome)
    report.sent = len(sent)
    report.runs = len({m.run_id for m in sent.values()})
    report.results_records = sum(len(v) for v in results.values())

    ids = list(sent)
    stored: dict[str, str | None] = {}  # the outcome's status
    decided: dict[str, str | None] = {}  # payment_result_<id>, the seed's contract
    for start in range(0, len(ids), 2000):
        chunk = ids[start:start + 2000]
        pipe = client.pipeline(transaction=False)
        for payment_id in chunk:
            pipe.hget(store.outcome_key(payment_id), "status")
            pipe.get(store.result_key(payment_id))
        answers = pipe.execute()
        for payment_id, status, decision in zip(chunk, answers[::2], answers[1::2],
                                                strict=True):
            stored[payment_id] = status.decode() if status else None
            decided[payment_id] = decision.decode() if decision else None
    for payment_id in ids:
        records = results.get(payment_id, [])
        if stored[payment_id] is None:
            report.lost_count += 1
            if len(report.lost) < LISTED:
                report.lost.append(payment_id)
            continue
        report.outcomes += 1
        if len({(r.status, r.reason_code) for r in records}) > 1 or len(records) > 1:
            report.doubled_count += 1
            if len(report.doubled) < LISTED:
                report.doubled.append(payment_id)
        # payment_result_<id> is written before the outcome with the same TTL: at the edge
        # of the TTL it may be gone while the outcome is not, so only a differing one counts.
        if records and (records[0].status != stored[payment_id]
                        or decided[payment_id] not in (None, records[0].status)):
            report.disagreeing_count += 1
            if len(report.disagreeing) < LISTED:
                report.disagreeing.append(payment_id)
    _check_ledgers(client, results, report)
    return report


def _check_ledgers(client: redis.Redis, results: dict[str, list[PaymentOutcome]],
                   report: AuditReport) -> None:
    """Every card's book and its payments' records (ledger_checks.check_card), and money
    conserved over all of them."""
    by_card: dict[tuple[str, str], list[PaymentOutcome]] = defaultdict(list)
    for records in results.values():
        outcome = records[0]
        if outcome.token:
            by_card[(outcome.run_id, outcome.token)].append(outcome)
    now = now_us()
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    pending: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)  # run -> merchants
    cards_l = sorted(by_card)
    for start in range(0, len(cards_l), 500):
        chunk = cards_l[start:start + 500]
        pipe = client.pipeline(transaction=False)
        for run, token in chunk:
            pipe.hgetall(ledger_store.card_key(run, token))
            for outcome in by_card[(run, token)]:
                pipe.get(ledger_store.record_key(run, token, outcome.payment_id))
        replies = iter(pipe.execute())
        for run, token in chunk:
            book = ledger_store.book_from_hash(next(replies))
            outcomes = by_card[(run, token)]
            records = {o.payment_id: ledger_store.decode_record(raw) if raw else None
                       for o, raw in zip(outcomes, [next(replies) for _ in outcomes],
                                         strict=True)}
            report.ledgers_checked += 1
            report.records_checked += sum(record is not None for record in records.values())
            check = ledger_checks.check_card(book, outcomes, records, now)
            for payment_id, what in check.problems:
                report.ledger_mismatch_count += 1
                if len(report.ledger_mismatches) < LISTED:
                    report.ledger_mismatches.append(LedgerMismatch(run, token, payment_id, what))
            report.holds_open += check.holds_open
            for payment_id in check.holds_overdue:
                if len(report.holds_overdue) < LISTED:
                    report.holds_overdue.append(payment_id)
            for (currency, kind), value in ledger_checks.account_kinds(book).items():
                totals[currency][kind] += value
            pending[run].update(ledger_checks.merchant_pending_lines(book))
    for run in sorted({run for run, _ in by_card}):
        book = settlement_store.read_book(client, run)
        for (currency, kind), value in ledger_checks.account_kinds(book).items():
            totals[currency][kind] += value
        batches = settlement_store.read_batches(client, run)
        report.settlement_batches += len(batches)
        for what in ledger_checks.check_settlement(
                book, batches, settlement_store.unsettled(client, run), pending[run]):
            report.ledger_mismatch_count += 1
            if len(report.ledger_mismatches) < LISTED:
                report.ledger_mismatches.append(LedgerMismatch(run, "-", None, what))
    report.balances = {currency: dict(sorted(kinds.items()))
                       for currency, kinds in sorted(totals.items())}
    report.unbalanced = {currency: total for currency, kinds in report.balances.items()
                         if (total := sum(kinds.values()))}


# ------------------------------------------------------------------------- card data scan

CVV_NAMES = {"cvv", "cvc", "cvv2", "cvc2", "csc", "card_verification"}
# Fields that hold 16-digit microsecond timestamps, which pass Luhn one time in ten: "at",
# any "..._at" (notified_at, hold_expires_at, requested_at), "t_..." and the stages.


@dataclass(frozen=True)
class Finding:
    """One place card data was found. Both texts are masked as they are made: the location
    holds the card number whenever it is a Redis key or a file named after one."""

    where: str  # topic/partition@offset, redis key, or log file:line
    what: str  # "PAN-like 411111******1111" (masked) or "CVV field 'cvv'"

    def __post_init__(self) -> None:
        object.__setattr__(self, "where", mask_pans(self.where))
        object.__setattr__(self, "what", mask_pans(self.what))


def _is_time_field(name: str) -> bool:
    return (name == "at" or name.endswith("_at") or name.startswith("t_")
            or name == "stages")


def _pan_findings(text: str, where: str) -> list[Finding]:
    """A finding for each card number in ``text``, as the edge refuses them
    (cards.card_numbers_in): standing alone, not inside a hex token, a UUID or a base64
    string, where digits border letters."""
    return [Finding(where, f"PAN-like {cards.mask(digits)}")
            for _, digits in cards.card_numbers_in(text)]


def mask_pans(text: str) -> str:
    """``text`` with every card number the scan would find in it masked (first 6, last 4)."""
    return cards.replace_card_numbers(text, cards.mask)


def _scan_value(value: Any, where: str, findings: list[Finding], name: str = "") -> None:
    """Walk decoded JSON: card-number-like strings or numbers, and CVV-named fields."""
    if name and name.lower() in CVV_NAMES:
        findings.append(Finding(where, f"CVV field {name!r}"))
    if isinstance(value, dict):  # the names too, also of a field of times (stage names)
        for key in value:
            findings += _pan_findings(str(key), where)
    if name and _is_time_field(name):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _scan_value(item, where, findings, str(key))
    elif isinstance(value, list):
        for item in value:
            _scan_value(item, where, findings, name)
    elif isinstance(value, str | int) and not isinstance(value, bool):
        findings += _pan_findings(str(value), where)


def _scan_bytes(raw: bytes, where: str, findings: list[Finding]) -> None:
    text = raw.decode(errors="replace")
    found: list[Finding] = []
    try:
        _scan_value(json.loads(text), where, found)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
        found = _pan_findings(text, where)
        if re.search(r'"?(cvv2?|cvc2?)"?\s*[:=]', text, re.IGNORECASE):
            found.append(Finding(where, "CVV field"))
    findings.extend(found)


_dead_letters = Codec(DeadLetter)


def scan_record(topics: TopicSettings, topic: str, value: bytes, where: str,
                findings: list[Finding]) -> None:
    """One record of ``topic``: of a dead letter, the original bytes it keeps; any other
    record (or one on the dead-letter topic that paysim did not write) as it is."""
    if topic == topics.dlq:
        # binascii.Error, an original that is no base64, is a ValueError
        with contextlib.suppress(SchemaError, ValueError):
            value = base64.b64decode(_dead_letters.decode(value).original or "", validate=True)
    _scan_bytes(value, where, findings)


def scan_card_data(settings: Settings) -> tuple[list[Finding], dict[str, int]]:
    """Every topic after the edge, every Redis key, every service log; findings masked."""
    findings: list[Finding] = []
    scanned: Counter[str] = Counter()
    topics = settings.topics
    for topic in (topics.authorized, topics.results, topics.notifications, topics.dlq):
        for index, value in enumerate(read_topic(settings, topic)):
            scanned["records"] += 1
            scan_record(topics, topic, value, f"{topic} record {index}", findings)
    client = store.connect(settings)
    try:
        for key in client.scan_iter(count=1000):
            scanned["redis keys"] += 1
            _scan_redis_key(client, key, findings)
    finally:
        client.close()
    logs = settings.services.dir / "logs"
    for log in sorted(logs.glob("*.log*")) if logs.is_dir() else []:
        scanned["log files"] += 1
        _scan_log(log, findings)
    return findings, dict(scanned)


def _scan_redis_key(client: redis.Redis, key: bytes, findings: list[Finding]) -> None:
    """The key's name, then what it holds."""
    name = key.decode(errors="replace")
    findings += _pan_findings(name, f"redis key {name}")
    _scan_redis(client, key, f"redis {name}", findings)


def _scan_redis(client: redis.Redis, key: bytes, where: str, findings: list[Finding]) -> None:
    kind = client.type(key).decode()
    if kind == "string":
        _scan_bytes(client.get(key) or b"", where, findings)
    elif kind == "hash":
        fields = {k.decode(errors="replace"): v.decode(errors="replace")
                  for k, v in client.hgetall(key).items()}
        _scan_value(_json_fields(fields), where, findings)
    elif kind == "stream":
        for _, entry in client.xrange(key):
            fields = {k.decode(errors="replace"): v.decode(errors="replace")
                      for k, v in entry.items()}
            _scan_value(_json_fields(fields), where, findings)
    elif kind in ("list", "set", "zset"):
        members = (client.lrange(key, 0, -1) if kind == "list" else
                   client.smembers(key) if kind == "set" else client.zrange(key, 0, -1))
        for member in members:
            _scan_bytes(member, where, findings)


def _json_fields(fields: dict[str, str]) -> dict[str, Any]:
    """Hash fields, with values that are JSON (merchant, webhook bodies) decoded too."""
    decoded: dict[str, Any] = {}
    for name, value in fields.items():
        try:
            decoded[name] = json.loads(value) if value[:1] in "{[" else value
        except ValueError:
            decoded[name] = value
    return decoded


def _scan_log(path: Path, findings: list[Finding]) -> None:
    try:
        with path.open(errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                findings += _pan_findings(line, f"{path}:{number}")
                if re.search(r'"?(cvv2?|cvc2?)"?\s*[:=]\s*"?\d{3,4}', line, re.IGNORECASE):
                    findings.append(Finding(f"{path}:{number}", "CVV value"))
    except OSError:
        return

"""The load engine's lifecycle mix on the real broker and Redis with run-all's services: every
kind of operation planned from the answers, sent onto payments.operations, answered by the
ledger service; the report's lifecycle table agrees with what the ledger answered, and the
audit balances, also when reversals race their authorizations on purpose."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import redis

from paysim.domain.messages import OperationKind
from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until
from paysim.load.plan import SendRequest
from paysim.load.report import RunReport
from paysim.load.run import run_load
from paysim.pipeline import store
from tests.integration.pipeline_helpers import paysim

EVERY_KIND = """
name = "every-operation"
seed = 12

[population]
cardholders = 150
merchants = 30

[mix]
bad_card_share = 0.05
test_card_share = 0.0

[issuer]
decline_rate = 0.0
fault_rate = 0.0

[load]
rate = 60
count = 240

[lifecycle]
manual_capture_share = 0.6
capture_delay = { min = "0.1s", max = "0.6s" }
partial_capture_share = 0.3
split_capture_share = 0.4
split_parts = 3
increment_share = 0.3
increment_delay = { min = "0.1s", max = "0.4s" }
void_share = 0.1
void_delay = "0.3s"
expire_share = 0.1
hold_ttl = "8s"  # longer than an increment and three captures, unless answers are slow
refund_share = 0.3
refund_delay = { min = "0.1s", max = "0.5s" }
partial_refund_share = 0.5
reversal_share = 0.06
reversal_delay = "0.5s"
reversal_race_share = 0.5
dispute_share = 0.2
dispute_delay = { mean = "0.3s", max = "1s" }
dispute_reasons = { "10.4" = 2, "13.1" = 1, "4853" = 1 }
dispute_won_share = 0.5
resolve_delay = "0.3s"
"""

RACING = """
name = "reversals-racing"
seed = 34

[population]
cardholders = 100
merchants = 20

[mix]
bad_card_share = 0.0
test_card_share = 0.0

[issuer]
decline_rate = 0.0
fault_rate = 0.0

[load]
rate = 50
count = 100

[lifecycle]
manual_capture_share = 0.5
capture_delay = "0.2s"
reversal_share = 0.5
reversal_race_share = 1.0
refund_share = 0.2
refund_delay = "0.2s"
"""


def run_scenario(settings: Settings, tmp_path: Path, text: str) -> RunReport:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return run_load(settings, SendRequest(scenario=str(path), timeout=60))


def ledger_answers(settings: Settings, run_id: str) -> dict[str, store.OperationDone]:
    """Every operation the ledger answered for the run, by id (the first answer of each)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        entries = client.xrange(store.run_operations_key(run_id))
    finally:
        client.close()
    answers: dict[str, store.OperationDone] = {}
    for _, fields in entries:
        answer = store.read_operation_done(fields)
        answers.setdefault(answer.op_id, answer)
    return answers


def assert_audit_clean(settings: Settings, run_id: str) -> None:
    result = paysim(settings, "audit", "--run", run_id, "--json")
    audit = json.loads(result.stdout)
    assert result.returncode == 0, audit.get("ledger_mismatches")
    assert audit["unbalanced"] == {} and audit["ledger_mismatch_count"] == 0


def test_every_operation_kind_runs_through_the_load_engine_and_the_audit_balances(
    pipeline: Settings, tmp_path: Path,
) -> None:
    report = run_scenario(pipeline, tmp_path, EVERY_KIND)

    assert report.outcomes.lost == 0
    table = report.lifecycle
    assert table is not None and table.lost == 0, table.kinds
    kinds = {row.kind: row for row in table.kinds}
    assert set(kinds) == {kind.value for kind in OperationKind}, sorted(kinds)
    for row in kinds.values():
        assert row.answered == row.scheduled > 0
        assert row.latency.count == row.answered and row.latency.p99_ms is not None

    # The table is what the ledger answered: count and amount per kind and code.
    answers = ledger_answers(pipeline, report.run_id)
    ledger_counts = Counter((a.kind, a.reason_code) for a in answers.values())
    ledger_amounts = Counter()
    for answer in answers.values():
        ledger_amounts[(answer.kind, answer.reason_code)] += answer.amount
    assert {(r.kind, r.reason_code): r.count for r in table.by_code} == dict(ledger_counts)
    assert {(r.kind, r.reason_code): sum(r.amounts.values())
            for r in table.by_code} == dict(ledger_amounts)
    assert table.answered == len(answers)

    # Planned from the answers, every operation was accepted; only a capture can find its
    # hold expired first, on a machine so busy that its chain outlasted the hold's TTL.
    expired = {a.payment_id for a in answers.values() if a.kind == OperationKind.EXPIRE}
    refused = [a for a in answers.values() if a.reason_code != "00"]
    assert all(a.kind == OperationKind.CAPTURE and a.reason_code == "57"
               and a.payment_id in expired for a in refused), refused
    assert len(refused) < 5, refused

    assert_audit_clean(pipeline, report.run_id)


def test_reversals_racing_their_authorizations_audit_clean(
    pipeline: Settings, tmp_path: Path,
) -> None:
    report = run_scenario(pipeline, tmp_path, RACING)

    table = report.lifecycle
    assert table is not None and table.lost == 0 and report.outcomes.lost == 0
    reversals = next(row for row in table.kinds if row.kind == OperationKind.REVERSE)
    assert reversals.answered == reversals.scheduled >= 30
    # Sent with their authorization: some reached the ledger first, whose authorization
    # then held nothing (17).
    codes = {row.reason_code: row.count for row in report.outcomes.by_reason}
    assert codes.get("17", 0) >= 1, codes
    assert_audit_clean(pipeline, report.run_id)


INVALID = """
name = "invalid-transitions"
seed = 56

[population]
cardholders = 60
merchants = 10

[mix]
bad_card_share = 0.0
test_card_share = 0.0

[issuer]
decline_rate = 0.1
fault_rate = 0.0

[load]
rate = 40
count = 80

[lifecycle]
manual_capture_share = 0.5
capture_delay = "0.2s"
void_share = 0.2
void_delay = "0.2s"
refund_share = 0.3
refund_delay = "0.2s"
dispute_share = 0.3
dispute_delay = "0.2s"
resolve_delay = "0.2s"
partial_approval_share = 0.5
invalid_share = 1.0
settlement_window = "2s"
"""


def test_invalid_transitions_from_the_load_engine_are_each_refused(
    pipeline: Settings, tmp_path: Path,
) -> None:
    """Every payment ends with one operation its state forbids (capture after a void, a
    decline or another capture; void or increment after a capture; a refund past what is
    left; a second dispute; a resolution with none open): the ledger refuses each, nothing
    moves, and the run's own 2 s settlement window files its movements."""
    report = run_scenario(pipeline, tmp_path, INVALID)

    table = report.lifecycle
    assert table is not None and table.lost == 0 and report.outcomes.lost == 0
    invalid = {row.kind: row for row in table.invalid}
    assert sum(row.answered for row in invalid.values()) == 80, table.invalid
    assert all(row.accepted == 0 and row.refused == row.answered for row in invalid.values())
    assert len(invalid) >= 4, sorted(invalid)  # several kinds of refusal, not one
    # The ledger's own answers say the same: every invalid operation refused, by its code.
    answers = ledger_answers(pipeline, report.run_id)
    refused = Counter(a.reason_code for a in answers.values() if a.reason_code != "00")
    assert sum(refused.values()) >= 80 and set(refused) <= {"57", "13", "25"}, refused
    assert_audit_clean(pipeline, report.run_id)

    # The run's settlement window, not the services' day: batches 2 s wide close soon.
    def closed_batches() -> list[dict]:
        result = paysim(pipeline, "settlement", "--run", report.run_id, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["batches"]

    assert wait_until(lambda: len(closed_batches()) > 0, timeout=30)
    assert {b["window_end"] - b["window_start"] for b in closed_batches()} == {2}

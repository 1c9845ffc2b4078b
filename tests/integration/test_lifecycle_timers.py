"""What happens on its own, with time: an uncaptured hold expires after lifecycle.hold_ttl, and
a settlement window closes into batches after lifecycle.settlement_window (both a couple of
seconds here), through run-all's ledger service on the real broker and Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until
from paysim.pipeline import settlement_store, store
from tests.helpers import free_port, settings_for
from tests.integration.pipeline_helpers import paysim, running_pipeline
from tests.integration.test_lifecycle_http import call


@pytest.fixture(scope="module")
def timed(local_stack, service_flags: dict[str, object]) -> Iterator[Settings]:
    with running_pipeline(settings_for({**service_flags, "http.port": free_port(),
                                        "issuer.decline_rate": 0, "issuer.fault_rate": 0,
                                        "lifecycle.hold_ttl": 2,
                                        "lifecycle.settlement_window": 2})) as settings:
        yield settings


def authorize(settings: Settings, client: redis.Redis, run: str, capture: str) -> str:
    status, body, _ = call(settings, "POST", "/authorize", {
        "card_number": "5555555555554444", "exp_month": 12, "exp_year": 2099, "cvv": "123",
        "amount": 7_500, "currency": "EUR", "run_id": run, "capture": capture})
    assert status == 200, body
    payment_id = body["payment_id"]
    assert wait_until(lambda: store.read_outcome(client, payment_id) is not None, timeout=60)
    return payment_id


def test_an_uncaptured_hold_expires_and_windows_settle_on_their_own(timed: Settings) -> None:
    run = f"timers-{uuid.uuid4().hex[:8]}"
    client = store.connect(timed)
    try:
        held = authorize(timed, client, run, "manual")
        captured = authorize(timed, client, run, "automatic")

        def state(payment_id: str) -> str:
            return call(timed, "GET", f"/payments/{payment_id}")[1]["lifecycle"]["state"]

        assert wait_until(lambda: state(held) == "expired", timeout=60), state(held)
        events = call(timed, "GET", f"/payments/{held}")[1]["lifecycle"]["events"]
        assert [e["kind"] for e in events] == ["authorized", "expired"]
        assert events[1]["operation"] == f"expire-{held}"  # one expiry per hold, by its id
        assert state(captured) == "captured"
        # The captured payment's window closes by itself: no `paysim settle`.
        assert wait_until(lambda: settlement_store.read_batches(client, run), timeout=60)
        [batch] = settlement_store.read_batches(client, run)
        assert batch.currency == "EUR" and batch.gross == 7_500 and batch.movements == 1
    finally:
        client.close()
    result = paysim(timed, "audit", "--run", run, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["ledger_mismatches"]
    assert report["holds_open"] == 0 and report["holds_overdue"] == []
    assert report["settlement_batches"] == 1

"""The live HTTP API against its own OpenAPI document (schemathesis): generated requests to
every operation, a bounded number per operation, and every answer's status and body must be
the document's. Then the answers generated requests cannot reach (an accepted payment, a
stored outcome, a replay) are checked against the document the same way."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import schemathesis

from paysim.domain.messages import Merchant, PaymentOutcome
from paysim.edge.openapi import ENDPOINTS, OPENAPI_PATH
from paysim.infra.config import Settings
from paysim.infra.topics import ensure_topics
from paysim.pipeline import store
from paysim.stack.manager import LocalStack
from tests.helpers import free_port, settings_for
from tests.integration.http_helpers import secret_flags, serving

EXAMPLES_PER_OPERATION = 100
NEXT_YEAR = datetime.now(UTC).year + 1


# schemathesis's settings for the run: the checks' expectations where paysim's answers are
# right and the generic expectation is not.
CONFIG = """
seed = 1312  # the same requests every run: a failure here is not luck
request-timeout = 15
max-failures = 10

[checks.positive_data_acceptance]
# A schema-valid request can still be refused: /authorize answers a failed card check (most
# generated card numbers fail Luhn), or a card number in a free-text field, with 400; a
# payment id with no outcome is 404; an Idempotency-Key in use is 409, used with another
# body 422.
expected-statuses = ["2XX", "400", "404", "409", "422"]

# Half the payment ids are one with an outcome, so that the 200 answers are checked too.
[dictionaries.stored]
values = ["{payment_id}"]

[parameters]
"path.payment_id" = {{ dictionary = "stored", probability = 0.5 }}
"body.transaction_id" = {{ dictionary = "stored", probability = 0.5 }}
"""


@pytest.fixture(scope="module")
def api(local_stack: LocalStack, stack_flags: dict[str, object]) -> Iterator[tuple[Settings, str]]:
    """The API served for real, on topics of this module's own."""
    suffix = uuid.uuid4().hex[:8]
    settings = settings_for({**stack_flags, **secret_flags(), "http.port": free_port(),
                             "topics.requested": f"test.openapi.requested.{suffix}",
                             "topics.notifications": f"test.openapi.notifications.{suffix}"})
    ensure_topics(settings)
    with serving(settings) as base:
        yield settings, base


@pytest.fixture(scope="module")
def api_schema(api: tuple[Settings, str]) -> schemathesis.BaseSchema:
    """The document as the API serves it."""
    return schemathesis.openapi.from_url(f"{api[1]}/openapi.json")


@pytest.mark.timeout(300)
def test_every_generated_answer_conforms_to_the_document(
    api: tuple[Settings, str], tmp_path: Path,
) -> None:
    """schemathesis's own runner (every phase but the stateful one, every check) on the
    document the API serves. Its pytest plugin is not used: it reaches into pytest's
    internals, which pytest 9.2 changed."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(payment_id=stored_outcome(api[0])))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
         "run", f"{api[1]}/openapi.json", "--checks", "all",
         "--phases", "examples,coverage,fuzzing",
         "--max-examples", str(EXAMPLES_PER_OPERATION), "--workers", "1"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    # It tested every operation of the document (schemathesis leaves out the document's own).
    tested = sum(1 for endpoint in ENDPOINTS if endpoint.path != OPENAPI_PATH)
    assert re.search(rf"Tested: {tested}\b", result.stdout), result.stdout[-3000:]
    cases = re.search(r"\d+ generated, .*", result.stdout)
    print(f"schemathesis: {cases and cases.group(0)} in {elapsed:.1f} s")


def stored_outcome(settings: Settings) -> str:
    """A finished payment in Redis, as the notifier leaves it; its id."""
    payment_id = str(uuid.uuid4())
    outcome = PaymentOutcome(
        payment_id=payment_id, run_id="run-openapi", seq=2, amount=1250, currency="USD",
        merchant=Merchant(id="m-1", name="Shop", mcc="5411", country="US"),
        callback_url=None, stages={"requested": 1, "authorized": 2, "processed": 3},
        status="approved", reason_code="00", reason_text="Approved", token="tok_x",
        masked_pan="424242******4242", network="visa")
    client = store.connect(settings)
    try:
        pipe = client.pipeline(transaction=False)
        store.write_outcome(pipe, outcome, 60, notification="sent", webhook_status="none")
        pipe.execute()
    finally:
        client.close()
    return payment_id


def test_the_answers_generated_requests_miss_conform_too(
    api: tuple[Settings, str], api_schema: schemathesis.BaseSchema,
) -> None:
    settings, base = api
    payment_id = stored_outcome(settings)
    card = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": NEXT_YEAR,
            "cvv": "123", "amount": 1250, "currency": "USD"}
    key = {"Idempotency-Key": f"openapi-{uuid.uuid4()}"}
    authorize = api_schema["/authorize"]["POST"]
    cases = [
        (authorize.Case(body=card), 200),
        (authorize.Case(body=card, headers=key), 200),
        (authorize.Case(body=card, headers=key), 200),  # the replay
        (authorize.Case(body={**card, "cvv": "1"}), 400),  # declined: reason_code
        (authorize.Case(body={**card, "merchant": None, "run_id": None, "seq": None}), 200),
        (api_schema["/payments/{payment_id}"]["GET"].Case(
            path_parameters={"payment_id": payment_id}), 200),
        (api_schema["/notify_client"]["POST"].Case(body={"transaction_id": payment_id}), 200),
        (api_schema["/healthz"]["GET"].Case(), 200),
    ]
    seen = []
    for case, expected in cases:
        response = case.call_and_validate(base_url=base)
        seen.append((case.operation.label, response.status_code, expected))
    assert [status for _, status, _ in seen] == [expected for _, _, expected in seen], seen
    assert response.json()["status"] in ("ok", "degraded")

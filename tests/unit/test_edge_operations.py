"""The operations' ids at the edge: fixed by the Idempotency-Key within one payment's one
operation, never shared across payments."""

from __future__ import annotations

import re

from paysim.domain.messages import OperationId
from paysim.edge.operations import operation_id

CAPTURE_A = "/payments/7d8c9b1e-0000-4000-8000-000000000001/capture"
CAPTURE_B = "/payments/7d8c9b1e-0000-4000-8000-000000000002/capture"


def test_a_key_gives_the_same_id_on_a_retry_and_another_on_another_payment() -> None:
    assert operation_id("order-17", CAPTURE_A) == operation_id("order-17", CAPTURE_A)
    assert operation_id("order-17", CAPTURE_A) != operation_id("order-17", CAPTURE_B)
    assert operation_id("order-17", CAPTURE_A) != operation_id("order-18", CAPTURE_A)
    assert operation_id(None, CAPTURE_A) != operation_id(None, CAPTURE_A)


def test_every_id_fits_the_operations_topic() -> None:
    pattern = OperationId.__metadata__[0].pattern
    for key in ("k", "x" * 255, None):
        assert re.match(pattern, operation_id(key, CAPTURE_A))

"""What clients send to the HTTP API, declared as types: the fields, their types and their
constraints, which the edge checks a request body against (paysim.edge.validation).

The card fields carry no constraints here on purpose: a bad card number, expiry, CVV, amount
or currency is a decision with a reason code (paysim.domain.decisions), not a malformed request.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from paysim.domain.messages import CallbackUrl, Merchant

DEFAULT_MERCHANT = Merchant(id="web", name="paysim web checkout", mcc="5999", country="US")
HTTP_RUN_ID = "http"  # the run of payments that name none
MAX_SEQ = 2**53 - 1  # what JSON readers everywhere hold exactly

# Tighter than a message's run id: the HTTP API has taken at most 100 characters from the start.
RunLabel = Annotated[str, msgspec.Meta(min_length=1, max_length=100,
                                       description="a string of 1 to 100 characters")]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ,
                                  description=f"a whole number from 0 to {MAX_SEQ}")]


class AuthorizeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /authorize``. An optional field given as null takes its default.

    ``run_id`` and ``seq`` let a load tool (`paysim send --via http`) tag its payments as one
    run."""

    card_number: str
    exp_month: int
    exp_year: int
    cvv: str
    amount: int
    currency: str
    merchant: Merchant = DEFAULT_MERCHANT
    callback_url: CallbackUrl | None = None
    run_id: RunLabel = HTTP_RUN_ID
    seq: Seq = 0

"""What clients send to the HTTP API, declared as types: the fields, their types and their
constraints, which the edge checks a request body against (paysim.edge.validation).

The card fields carry no constraints here on purpose: a bad card number, expiry, CVV, amount
or currency is a decision with a reason code (paysim.domain.decisions), not a malformed request.
Only the expiry's text form is checked, as far as reading a month and a year out of it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from paysim.domain import cards
from paysim.domain.messages import (
    CallbackUrl,
    CaptureMode,
    Merchant,
    MinorUnits,
    NoCardNumber,
    NumberNoCardNumber,
)

DEFAULT_MERCHANT = Merchant(id="web", name="paysim web checkout", mcc="5999", country="US")
HTTP_RUN_ID = "http"  # the run of payments that name none
MAX_SEQ = 2**53 - 1  # what JSON readers everywhere hold exactly

# Tighter than a message's run id: the HTTP API has taken at most 100 characters from the start.
RunLabel = Annotated[str, msgspec.Meta(min_length=1, max_length=100,
                                       description="a string of 1 to 100 characters"),
                     NoCardNumber]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ,
                                  description=f"a whole number from 0 to {MAX_SEQ}"),
              NumberNoCardNumber]
# As printed on a card; the seed took any card data, and its clients may send this form.
Expiry = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}/(?:[0-9]{2}|[0-9]{4})\Z",
                                     description="MM/YY or MM/YYYY")]


class OneOf:
    """Optional fields of which a request gives exactly one ``way``, each way whole: e.g.
    exp_month and exp_year, or expiry. Declared on a request type as ``one_of``; ``what`` names
    the group in the answer when none or two ways are given."""

    def __init__(self, what: str, *ways: tuple[str, ...]) -> None:
        self.what = what
        self.ways = ways


class AuthorizeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /authorize. An optional field given as null takes its default.
    The card's expiry comes as exp_month and exp_year, or as expiry. run_id and seq let a
    load tool (paysim send --via http) tag its payments as one run."""

    # This docstring is the request's description in the OpenAPI document: written for
    # clients. The expiry's two forms are the one_of group below; read it with card_expiry().

    one_of: ClassVar[tuple[OneOf, ...]] = (
        OneOf("the card's expiry", ("exp_month", "exp_year"), ("expiry",)),
    )

    card_number: str
    exp_month: int | None = None
    exp_year: int | None = None
    expiry: Expiry | None = None
    cvv: str
    amount: MinorUnits
    currency: str
    merchant: Merchant = DEFAULT_MERCHANT
    callback_url: CallbackUrl | None = None
    run_id: RunLabel = HTTP_RUN_ID
    seq: Seq = 0
    capture: CaptureMode = CaptureMode.AUTOMATIC
    partial_approval: bool = False

    def card_expiry(self) -> tuple[int, int]:
        """(month, year), from whichever form the request gave."""
        if self.expiry is not None:
            return cards.parse_expiry(self.expiry)
        if self.exp_month is None or self.exp_year is None:
            raise ValueError("no expiry: the edge's one_of check lets no such request through")
        return self.exp_month, self.exp_year


# The bodies of the operations on a payment (POST /payments/<id>/capture, ...). Amounts in
# minor units of the payment's currency; left out, an amount means "all there is".
Amount = Annotated[int, msgspec.Meta(gt=0, le=MAX_SEQ,
                                     description="a whole number of minor units above 0")]


class OperationBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operation that takes no fields (void, reverse): an empty body or {}."""


class CaptureBody(OperationBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Amount | None = None  # left out: all that is held
    final: bool = False  # release what this capture leaves held


class IncrementBody(OperationBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Amount


class RefundBody(OperationBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Amount | None = None  # left out: all that is refundable


class DisputeBody(OperationBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason_code: Annotated[str, msgspec.Meta(min_length=1, max_length=8,
                                             description="a network's reason code such as "
                                                         "10.4 or 4837")]


class ResolveBody(OperationBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    won: bool

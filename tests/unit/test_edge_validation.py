"""POST /authorize bodies against the declared request type: the exact one-line answers."""

from __future__ import annotations

from typing import Any

import pytest

from paysim.domain.messages import Merchant
from paysim.domain.requests import DEFAULT_MERCHANT, MAX_SEQ, AuthorizeRequest
from paysim.edge.validation import BadRequest, authorize_request, transaction_id

SHOP = {"id": "m-1", "name": "Corner Shop", "mcc": "5411", "country": "GB"}


def body(**changes: Any) -> dict[str, Any]:
    given: dict[str, Any] = {"card_number": "4242424242424242", "exp_month": 12,
                             "exp_year": 2030, "cvv": "987", "amount": 1250, "currency": "USD"}
    given.update(changes)
    return {name: value for name, value in given.items() if value is not ...}


def error(given: dict[str, Any]) -> str:
    with pytest.raises(BadRequest) as caught:
        authorize_request(given)
    assert caught.value.status == 400 and caught.value.fields == {}
    return str(caught.value)


def test_a_full_body_is_typed() -> None:
    request = authorize_request(body(merchant=SHOP, callback_url="https://e.test/h",
                                      run_id="run-1", seq=MAX_SEQ))
    assert request == AuthorizeRequest(
        card_number="4242424242424242", exp_month=12, exp_year=2030, cvv="987", amount=1250,
        currency="USD", merchant=Merchant(**SHOP), callback_url="https://e.test/h",
        run_id="run-1", seq=MAX_SEQ)


def test_optional_fields_left_out_or_null_take_their_defaults() -> None:
    for given in (body(), body(merchant=None, callback_url=None, run_id=None, seq=None)):
        request = authorize_request(given)
        assert (request.merchant, request.callback_url, request.run_id, request.seq) == (
            DEFAULT_MERCHANT, None, "http", 0)


def test_card_values_are_decisions_not_bad_requests() -> None:
    # Left to decisions.check_card, which answers with a reason code.
    request = authorize_request(body(amount=2**70, currency="usd", exp_month=13, cvv="x"))
    assert (request.amount, request.currency) == (2**70, "usd")


@pytest.mark.parametrize(("given", "expected"), [
    (body(cvv=...), "missing field 'cvv'"),
    (body(amount="12"), "field 'amount' must be a whole number"),
    (body(amount=True), "field 'amount' must be a whole number"),
    (body(amount=12.0), "field 'amount' must be a whole number"),
    (body(card_number=4242), "field 'card_number' must be a string"),
    (body(card_number=None), "field 'card_number' must be a string"),
    (body(tip=1, aa=2), "unknown field 'aa'"),
    (body(**{"x" * 50: 1}), f"unknown field '{'x' * 40}...'"),
    (body(merchant="shop"),
     "field 'merchant' must be an object with id, name, mcc and country"),
    (body(merchant={**SHOP, "zz": 1}), "unknown field 'merchant.zz'"),
    (body(merchant={k: v for k, v in SHOP.items() if k != "country"}),
     "missing field 'merchant.country'"),
    (body(merchant={**SHOP, "mcc": 5411}), "field 'merchant.mcc' must be a string"),
    (body(merchant={**SHOP, "id": ""}), "field 'merchant.id' must be 1 to 200 characters"),
    (body(merchant={**SHOP, "name": "n" * 201}),
     "field 'merchant.name' must be 1 to 200 characters"),
    (body(merchant={**SHOP, "mcc": "54"}), "field 'merchant.mcc' must be 4 digits"),
    (body(merchant={**SHOP, "mcc": "5411\n"}), "field 'merchant.mcc' must be 4 digits"),
    (body(merchant={**SHOP, "country": "gb"}),
     "field 'merchant.country' must be 2 capital letters (ISO 3166)"),
    (body(callback_url=5), "field 'callback_url' must be a string"),
    (body(callback_url="ftp://e.test/x"),
     "field 'callback_url' must be an http:// or https:// URL"),
    (body(callback_url="http://[::1"),
     "field 'callback_url' must be an http:// or https:// URL"),
    (body(run_id=""), "field 'run_id' must be a string of 1 to 100 characters"),
    (body(run_id=7), "field 'run_id' must be a string of 1 to 100 characters"),
    (body(run_id="r" * 101), "field 'run_id' must be a string of 1 to 100 characters"),
    (body(seq=-1), f"field 'seq' must be a whole number from 0 to {MAX_SEQ}"),
    (body(seq=True), f"field 'seq' must be a whole number from 0 to {MAX_SEQ}"),
    (body(seq=MAX_SEQ + 1), f"field 'seq' must be a whole number from 0 to {MAX_SEQ}"),
], ids=lambda value: "" if isinstance(value, dict) else value)
def test_each_problem_has_its_answer(given: dict[str, Any], expected: str) -> None:
    assert error(given) == expected


@pytest.mark.parametrize(("given", "expected"), [
    # Unknown fields first, then required fields in declaration order, whatever the key order.
    ({"tip": 1, **body(amount="x")}, "unknown field 'tip'"),
    ({"cvv": 5, **body(exp_month=..., cvv=...)}, "missing field 'exp_month'"),
    (body(seq=-1, merchant={**SHOP, "mcc": "1"}, amount=None),
     "field 'amount' must be a whole number"),
    # Then the rest in declaration order: the merchant before the callback URL and run id.
    ({"run_id": 5, "callback_url": 5, **body(merchant={**SHOP, "mcc": "1"})},
     "field 'merchant.mcc' must be 4 digits"),
    # In the merchant: every field's type before any field's constraint.
    (body(merchant={"country": "USA", "mcc": "54", "name": 5, "id": ""}),
     "field 'merchant.name' must be a string"),
    (body(merchant={"country": "USA", "mcc": "54", "name": "n", "id": ""}),
     "field 'merchant.id' must be 1 to 200 characters"),
], ids=["unknown-first", "missing-in-order", "required-before-optional",
        "merchant-before-callback", "merchant-types-first", "merchant-constraints-in-order"])
def test_the_first_problem_in_a_fixed_order(given: dict[str, Any], expected: str) -> None:
    assert error(given) == expected


def test_transaction_id() -> None:
    assert transaction_id({"transaction_id": "t-1", "other": 1}) == "t-1"
    for given, expected in (({}, "missing field 'transaction_id'"),
                            ({"transaction_id": None}, "missing field 'transaction_id'"),
                            ({"transaction_id": 42}, "must be a non-empty string"),
                            ({"transaction_id": " "}, "must be a non-empty string")):
        with pytest.raises(BadRequest, match=expected):
            transaction_id(given)

"""POST /authorize bodies against the declared request type: the exact one-line answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Request
from werkzeug.test import EnvironBuilder

from paysim.domain.messages import Merchant
from paysim.domain.requests import DEFAULT_MERCHANT, MAX_SEQ, AuthorizeRequest
from paysim.edge.validation import (
    BadRequest,
    authorize_raw,
    authorize_request,
    notify_body,
    transaction_id,
)

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


# ---------------------------------------------------------------------------- card data


PAN = "4242424242424242"
NO_PAN = "must not hold a card number (a Luhn-valid run of 13 to 19 digits)"


@pytest.mark.parametrize(("given", "expected"), [
    (body(run_id=f"run {PAN}"), f"field 'run_id' {NO_PAN}"),
    (body(run_id="4242 4242 4242 4242"), f"field 'run_id' {NO_PAN}"),
    (body(merchant={**SHOP, "id": PAN}), f"field 'merchant.id' {NO_PAN}"),
    (body(merchant={**SHOP, "name": f"Shop {PAN}"}), f"field 'merchant.name' {NO_PAN}"),
    (body(callback_url=f"https://e.test/h?card={PAN}"), f"field 'callback_url' {NO_PAN}"),
    (body(callback_url=f"ftp://e.test/{PAN}"),  # both rules broken: the URL's first
     "field 'callback_url' must be an http:// or https:// URL"),
], ids=["run_id", "run_id-spaced", "merchant.id", "merchant.name", "callback_url",
        "callback_url-not-http"])
def test_a_card_number_in_a_free_field_is_refused(given: dict[str, Any], expected: str) -> None:
    answer = error(given)
    assert answer == expected
    assert PAN not in answer and "4242 4242" not in answer


@pytest.mark.parametrize("field", ["amount", "seq"])
def test_a_number_that_looks_like_a_card_number_is_refused(field: str) -> None:
    # Every record and answer about the payment echoes its amount and its seq.
    answer = error(body(**{field: int(PAN)}))
    assert answer == (f"field '{field}' must not look like a card number (a Luhn-valid run of "
                      "13 to 19 digits)")
    assert PAN not in answer
    assert getattr(authorize_request(body(**{field: 10**12 - 1})), field) == 10**12 - 1


def test_the_card_number_itself_is_not_a_free_field() -> None:
    assert authorize_request(body(card_number=PAN)).card_number == PAN


# ---------------------------------------------------------------------------- surrogates


SURROGATE = "\ud800"
NOT_UNICODE = "must be valid Unicode text (it holds a lone UTF-16 surrogate)"


@pytest.mark.parametrize(("given", "expected"), [
    (body(card_number=PAN + SURROGATE), f"field 'card_number' {NOT_UNICODE}"),
    (body(cvv=SURROGATE), f"field 'cvv' {NOT_UNICODE}"),
    (body(currency="US" + SURROGATE), f"field 'currency' {NOT_UNICODE}"),
    (body(merchant={**SHOP, "name": "a\udfffb"}), f"field 'merchant.name' {NOT_UNICODE}"),
    (body(merchant={**SHOP, "id": SURROGATE}), f"field 'merchant.id' {NOT_UNICODE}"),
    (body(callback_url="https://e.test/" + SURROGATE), f"field 'callback_url' {NOT_UNICODE}"),
    (body(run_id=SURROGATE), f"field 'run_id' {NOT_UNICODE}"),
    (body(exp_month=..., exp_year=..., expiry="12/3" + SURROGATE),
     f"field 'expiry' {NOT_UNICODE}"),
], ids=["card_number", "cvv", "currency", "merchant.name", "merchant.id", "callback_url",
        "run_id", "expiry"])
def test_a_lone_surrogate_is_refused_naming_the_field(given: dict[str, Any], expected: str
                                                      ) -> None:
    assert error(given) == expected


def test_an_unknown_field_named_with_a_surrogate_is_answered_in_valid_unicode() -> None:
    assert error(body(**{"tip" + SURROGATE: 1})) == "unknown field 'tip?'"


@pytest.mark.parametrize(("name", "expected"), [
    ("4242424242424242", "[card number]"),
    ("pan 4242 4242 4242 4242", "pan [card number]"),
    # Masked before it is cut to 40 characters: the cut must not leave 12 of its digits.
    ("p" * 30 + " 4242424242424242", "p" * 30 + " [card num..."),
])
def test_an_unknown_field_named_with_a_card_number_is_answered_without_it(
        name: str, expected: str) -> None:
    assert error(body(**{name: 1})) == f"unknown field '{expected}'"


def test_a_surrogate_in_the_transaction_id_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        transaction_id({"transaction_id": "t-" + SURROGATE})
    assert str(caught.value) == f"field 'transaction_id' {NOT_UNICODE}"


# ---------------------------------------------------------------------------- expiry as text


@pytest.mark.parametrize(("expiry", "expected"), [("12/30", (12, 2030)), ("07/2031", (7, 2031)),
                                                  ("13/30", (13, 2030))])
def test_the_expiry_may_be_given_as_text(expiry: str, expected: tuple[int, int]) -> None:
    request = authorize_request(body(exp_month=..., exp_year=..., expiry=expiry))
    assert request.card_expiry() == expected


def test_exp_month_and_exp_year_are_the_card_expiry() -> None:
    assert authorize_request(body()).card_expiry() == (12, 2030)
    # A null expiry is one left out.
    assert authorize_request(body(expiry=None)).card_expiry() == (12, 2030)


EXPIRY_WAYS = "give exp_month and exp_year, or expiry (MM/YY or MM/YYYY)"


@pytest.mark.parametrize(("given", "expected"), [
    (body(exp_month=..., exp_year=...), f"missing the card's expiry: {EXPIRY_WAYS}"),
    (body(exp_month=None, exp_year=None), f"missing the card's expiry: {EXPIRY_WAYS}"),
    (body(expiry="12/30"), f"the card's expiry is given twice: {EXPIRY_WAYS}, not both"),
    (body(exp_year=..., expiry="12/30"),
     f"the card's expiry is given twice: {EXPIRY_WAYS}, not both"),
    (body(exp_year=...), "missing field 'exp_year'"),
    (body(exp_month=...), "missing field 'exp_month'"),
    (body(exp_month=..., exp_year=..., expiry="1230"), "field 'expiry' must be MM/YY or MM/YYYY"),
    (body(exp_month=..., exp_year=..., expiry="12/30 "),
     "field 'expiry' must be MM/YY or MM/YYYY"),
    (body(exp_month=..., exp_year=..., expiry=1230), "field 'expiry' must be a string"),
    # In declaration order: the expiry before the cvv.
    (body(exp_month=..., exp_year=..., cvv=...), f"missing the card's expiry: {EXPIRY_WAYS}"),
], ids=["neither", "neither-null", "both", "both-partly", "month-only", "year-only",
        "no-slash", "trailing-space", "not-a-string", "expiry-before-cvv"])
def test_the_expiry_one_way_or_the_other(given: dict[str, Any], expected: str) -> None:
    assert error(given) == expected


# ---------------------------------------------------------------------------- expected fields


EXPECTED = ("; expected fields: card_number, exp_month, exp_year (or expiry: MM/YY or MM/YYYY), "
            "cvv, amount, currency; optional: merchant {id, name, mcc, country}, callback_url, "
            "run_id, seq, capture, partial_approval")


def posted(data: bytes) -> Request:
    return Request(EnvironBuilder(method="POST", data=data,
                                  content_type="application/json").get_environ())


@pytest.mark.parametrize(("data", "first"), [
    (b"", "request body is empty; expected a JSON object"),
    (b"{", "request body is not valid JSON"),
    (b"[]", "request body must be a JSON object"),
    (json.dumps(body(cvv=...)).encode(), "missing field 'cvv'"),
    (json.dumps(body(tip=1)).encode(), "unknown field 'tip'"),
    (json.dumps(body(run_id=PAN)).encode(), f"field 'run_id' {NO_PAN}"),
    (json.dumps(body(expiry="12/30")).encode(),
     f"the card's expiry is given twice: {EXPIRY_WAYS}, not both"),
], ids=["empty", "not-json", "not-object", "missing", "unknown", "card-number", "expiry-twice"])
def test_every_bad_authorize_body_says_which_fields_are_expected(data: bytes, first: str
                                                                 ) -> None:
    with pytest.raises(BadRequest) as caught:
        authorize_raw(data)
    assert (caught.value.status, str(caught.value)) == (400, first + EXPECTED)


def test_a_good_authorize_body_is_typed() -> None:
    data = json.dumps(body()).encode()
    assert authorize_raw(data) == authorize_request(body())


@pytest.mark.parametrize(("data", "first"), [
    (b"", "request body is empty; expected a JSON object"),
    (b"{}", "missing field 'transaction_id'"),
    (b'{"transaction_id": 5}', "field 'transaction_id' must be a non-empty string"),
])
def test_every_bad_notify_body_says_which_fields_are_expected(data: bytes, first: str) -> None:
    with pytest.raises(BadRequest) as caught:
        notify_body(posted(data))
    assert str(caught.value) == first + "; expected fields: transaction_id"
    assert notify_body(posted(b'{"transaction_id": "t-1"}')) == "t-1"

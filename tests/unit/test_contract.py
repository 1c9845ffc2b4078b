"""The written contract: the OpenAPI document is valid OpenAPI 3.1 and names every route of the
app; the AsyncAPI document has AsyncAPI 3.0's shape, every reference in it resolves, and it
names every topic; the schemas say what the code does (records paysim writes validate, the
edge's request rules and the request schema agree); `paysim schema`."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import msgspec
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT202012

from paysim.domain import cards
from paysim.domain.contract import ecma_pattern
from paysim.domain.messages import (
    UUID_PATTERN,
    DeadLetter,
    Merchant,
    Notification,
    OperationKind,
    OperationRequested,
    PaymentAuthorized,
    PaymentEvent,
    PaymentOutcome,
    new_payment_request,
)
from paysim.domain.settlement import Batch
from paysim.edge.app import create_app
from paysim.edge.openapi import ENDPOINTS, OPENAPI_PATH, openapi_document
from paysim.edge.validation import BadRequest, authorize_request
from paysim.pipeline.asyncapi import TOPICS, asyncapi_document, record_schema, topic_fields
from tests.helpers import assert_one_line_error
from tests.unit.cli_runner import PaysimCli
from tests.unit.fakes import KEYS, AckingProducer, FakeRedis, pure_settings

SETTINGS = pure_settings({"topics.results": "shop.results"})
MERCHANT = Merchant(id="m-1", name="Book Shop", mcc="5942", country="US")
PAYMENT_ID = "0b6f5c1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e"
COMMON: dict[str, Any] = {"payment_id": PAYMENT_ID, "run_id": "run-1", "seq": 4,
                          "amount": 1999, "currency": "USD", "merchant": MERCHANT,
                          "stages": {"requested": 1, "authorized": 2}}
# One record of each topic's type, as the services build them.
RECORDS: dict[type, msgspec.Struct] = {
    PaymentAuthorized: PaymentAuthorized(**COMMON, token="tok_1", masked_pan="424242******4242",
                                         network="visa", exp_month=12, exp_year=2031),
    PaymentOutcome: PaymentOutcome(**COMMON, status="declined", reason_code="51",
                                   reason_text="Insufficient funds", masked_pan=None),
    Notification: Notification(event_id="evt_1", payment_id=PAYMENT_ID, run_id="run-1",
                               status="approved", reason_code="00", amount=1999,
                               currency="USD", masked_pan="424242******4242", notified_at=3),
    DeadLetter: DeadLetter(service="processor", source_topic="payments.authorized",
                           partition=2, offset=17, reason="not valid JSON", key=None,
                           original="bm90IGpzb24=", original_size=8, original_sha256="ab",
                           at=5),
    OperationRequested: OperationRequested(op_id="op_1", kind=OperationKind.CAPTURE,
                                           payment_id=PAYMENT_ID, run_id="run-1",
                                           token="tok_1", amount=500, requested_at=6),
    PaymentEvent: PaymentEvent(event_id="evt_2", kind="captured", payment_id=PAYMENT_ID,
                               run_id="run-1", op_id="op_1", amount=500, currency="USD",
                               merchant_id="m-1", network="visa", mti="0220",
                               state="partially_captured", at=7),
    Batch: Batch(batch_id="run-1/0.1/m-1/USD", run_id="run-1", merchant_id="m-1",
                 currency="USD", window_start=0, window_end=86400, gross=500, interchange=9,
                 net=491, movements=1, closed_at=8),
}
# Per record type: a number field to break and a required field to leave out.
NUMBER_FIELD = {DeadLetter: "at", Batch: "net"}
REQUIRED_FIELD = {DeadLetter: "service", Batch: "batch_id"}


def requested_record() -> msgspec.Struct:
    card = cards.CardBlock(number="4242424242424242", exp_month=12, exp_year=2031, cvv="123")
    return new_payment_request(card, cards.CardCipher(KEYS.card_key), run_id="run-1", seq=0,
                               amount=100, currency="EUR", merchant=MERCHANT,
                               callback_url="https://shop.example/hook")


DOCUMENT_URI = "urn:paysim:document"


def refs(node: Any) -> list[str]:
    """Every $ref in a document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in refs(item)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer ("#/a/b~1c") in ``document``; KeyError when it points nowhere."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# ---------------------------------------------------------------------------- OpenAPI


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(document).validate()
    for ref in refs(document):
        resolve(document, ref)


def test_every_route_of_the_app_is_in_the_document_and_nothing_else() -> None:
    app = create_app(SETTINGS, KEYS, AckingProducer(), FakeRedis(),  # type: ignore[arg-type]
                     None)  # type: ignore[arg-type]
    routes = {(method.lower(), rule.rule.replace("<", "{").replace(">", "}"))
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    documented = {(method, path) for path, item in openapi_document()["paths"].items()
                  for method in item}
    assert routes == documented
    assert len({endpoint.operation_id for endpoint in ENDPOINTS}) == len(ENDPOINTS)


def test_the_app_serves_the_document() -> None:
    app = create_app(SETTINGS, KEYS, AckingProducer(), FakeRedis(),  # type: ignore[arg-type]
                     None)  # type: ignore[arg-type]
    response = app.test_client().get(OPENAPI_PATH)
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == openapi_document()


def validator(document: dict[str, Any], ref: str, kind: Any = jsonschema.Draft202012Validator,
              ) -> Any:
    """A validator of the schema at ``ref`` inside ``document``, its own refs resolved there."""
    specification = DRAFT7 if kind is jsonschema.Draft7Validator else DRAFT202012
    registry = Registry().with_resource(DOCUMENT_URI, Resource.from_contents(
        document, default_specification=specification))
    return kind({"$ref": DOCUMENT_URI + ref}, registry=registry)


def authorize_validator() -> jsonschema.Draft202012Validator:
    document = openapi_document()
    schema = document["paths"]["/authorize"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    return validator(document, schema["$ref"])


CARD: dict[str, Any] = {"card_number": "4242424242424242", "cvv": "123", "amount": 1250,
                        "currency": "USD"}


@pytest.mark.parametrize("body", [
    {**CARD, "exp_month": 12, "exp_year": 2031},
    {**CARD, "expiry": "12/31"},
    {**CARD, "expiry": "12/2031", "exp_month": None, "exp_year": None},
    {**CARD, "exp_month": 12, "exp_year": 2031, "expiry": None, "merchant": None,
     "run_id": None, "seq": None, "callback_url": None},
    {**CARD, "exp_month": 12, "exp_year": 2031, "merchant": msgspec.to_builtins(MERCHANT),
     "run_id": "r", "seq": 2**53 - 1},
    {**CARD},  # no expiry
    {**CARD, "exp_month": 12},  # half of one
    {**CARD, "exp_month": 12, "exp_year": 2031, "expiry": "12/31"},  # both
    {**CARD, "exp_month": 12, "exp_year": None, "expiry": "12/31"},
    # Not "12/31\n": the documents' patterns are ECMA-262's, as JSON Schema says, where $ is
    # the end of the text; Python's re, which the jsonschema package uses, also takes $ before
    # a trailing newline.
    {**CARD, "expiry": "1/31"},
    {**CARD, "exp_month": 12, "exp_year": 2031, "colour": "red"},
    {**CARD, "exp_month": 12, "exp_year": 2031,
     "merchant": {**msgspec.to_builtins(MERCHANT), "extra": 1}},
    {**CARD, "exp_month": 12, "exp_year": 2031, "merchant": {"id": "m"}},
    {**CARD, "exp_month": "12", "exp_year": 2031},
    {**CARD, "exp_month": 12, "exp_year": 2031, "seq": -1},
    {**CARD, "exp_month": 12, "exp_year": 2031, "run_id": ""},
    {key: value for key, value in CARD.items() if key != "cvv"} | {"expiry": "12/31"},
])
def test_the_request_schema_takes_what_the_edge_takes(body: dict[str, Any]) -> None:
    """The schema's answer is the edge's: the one_of groups, nulls for defaults, unknown
    fields at every depth, the constraints (the edge's Checks aside: no card number in free
    text, the callback URL's form, which a JSON Schema cannot say)."""
    try:
        authorize_request(body)
        taken = True
    except BadRequest:
        taken = False
    assert authorize_validator().is_valid(body) == taken


def test_patterns_are_written_for_json_schema() -> None:
    """ECMA-262 knows no \\Z; the declared patterns use it, the documents must not."""
    assert ecma_pattern(UUID_PATTERN).endswith("}$")
    for document in (openapi_document(), asyncapi_document(SETTINGS)):
        assert "\\\\Z" not in json.dumps(document)


# ---------------------------------------------------------------------------- AsyncAPI


def test_the_asyncapi_document_has_asyncapi_3_shape_and_every_ref_resolves() -> None:
    document = asyncapi_document(SETTINGS)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    for server in document["servers"].values():
        assert server["host"] and server["protocol"] == "kafka"
    for name, channel in document["channels"].items():
        assert channel["address"] == getattr(SETTINGS.topics, name)
        assert channel["messages"]
    for operation in document["operations"].values():
        assert operation["action"] in ("send", "receive")
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            # AsyncAPI 3.0: an operation's messages are its channel's.
            assert message["$ref"].startswith(f"{channel}/messages/")
    for message in document["components"]["messages"].values():
        assert message["payload"]["$ref"].startswith("#/components/schemas/")
        assert "key" in message["bindings"]["kafka"]
    assert refs(document)
    for ref in refs(document):
        resolve(document, ref)
    assert document["channels"]["results"]["address"] == "shop.results"


def test_every_topic_setting_has_a_topic_in_the_document() -> None:
    assert sorted(topic.setting for topic in TOPICS) == sorted(topic_fields())
    assert sorted(asyncapi_document(SETTINGS)["channels"]) == sorted(topic_fields())
    assert set(topic_fields()) == {"requested", "authorized", "results", "notifications", "dlq",
                                  "operations", "events", "settlements"}


def sample(record_type: type) -> msgspec.Struct:
    return requested_record() if record_type.__name__ == "PaymentRequested" else \
        RECORDS[record_type]


@pytest.mark.parametrize("topic", TOPICS, ids=lambda topic: topic.setting)
def test_what_paysim_writes_validates_against_its_topic_schema(topic: Any) -> None:
    record = json.loads(msgspec.json.encode(sample(topic.record)))
    standalone = jsonschema.Draft202012Validator(record_schema(SETTINGS, topic))
    assert list(standalone.iter_errors(record)) == []
    # The same through the AsyncAPI document's own components (its default schema format
    # is JSON Schema draft 7's superset).
    document = asyncapi_document(SETTINGS)
    payload = document["components"]["messages"][topic.record.__name__]["payload"]
    assert validator(document, payload["$ref"], jsonschema.Draft7Validator).is_valid(record)
    # A schema that takes anything would pass the above: records it must refuse.
    assert not standalone.is_valid({**record, NUMBER_FIELD.get(topic.record, "amount"): "12.50"})
    del record[REQUIRED_FIELD.get(topic.record, "payment_id")]
    assert not standalone.is_valid(record)


# ---------------------------------------------------------------------------- the CLI


def test_schema_openapi_prints_the_document(paysim_cli: PaysimCli) -> None:
    result = paysim_cli("schema", "openapi")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == openapi_document()


def test_schema_topic_prints_one_record_schema_by_setting_or_name(
    paysim_cli: PaysimCli,
) -> None:
    by_setting = paysim_cli("schema", "topic", "results")
    by_name = paysim_cli("schema", "topic", "payments.results")
    assert by_setting.returncode == 0 and by_setting.stdout == by_name.stdout
    schema = json.loads(by_setting.stdout)
    assert schema["$ref"] == "#/$defs/PaymentOutcome"
    assert jsonschema.Draft202012Validator(schema).is_valid(
        json.loads(msgspec.json.encode(RECORDS[PaymentOutcome])))


def test_schema_topic_of_an_unknown_name_is_one_line_and_exit_2(
    paysim_cli: PaysimCli,
) -> None:
    result = paysim_cli("schema", "topic", "payments.nope\x1b[31m")
    assert_one_line_error(result, 2, "unknown topic 'payments.nope\\x1b[31m'",
                          "requested (payments.requested)", "dlq (payments.dlq)")
    assert result.stdout == ""

"""The HTTP API's OpenAPI 3.1 document: served at GET /openapi.json, printed by
`paysim schema openapi`.

Built, not written: the request and answer bodies are the JSON Schema of the types the edge
checks requests against and builds its answers from (paysim.domain.requests,
paysim.edge.answers, the stored outcome's view, the health answer), so the document cannot
drift from the code. What is written here is ENDPOINTS: per route its method, path, request,
parameters and answers. A new endpoint is one entry there (tests/unit/test_contract.py fails
when a route of the app has none, or an entry no route).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import msgspec

from paysim import __version__
from paysim.domain.contract import schema_components
from paysim.domain.requests import AuthorizeRequest
from paysim.edge import idempotency
from paysim.edge.answers import (
    Accepted,
    Declined,
    Error,
    OperationApplied,
    OperationPending,
    Refused,
    Resent,
)
from paysim.edge.health import HEALTH_PATH, HealthAnswer
from paysim.edge.operations import ROUTES, Route
from paysim.edge.validation import MAX_BODY_BYTES
from paysim.infra.tracing import TRACERESPONSE
from paysim.pipeline.ledger_store import PaymentView

OPENAPI_PATH = "/openapi.json"
REF = "#/components/schemas/"

Body = type[msgspec.Struct] | dict[str, Any]  # a declared type, or a schema written here


@dataclass(frozen=True)
class Answer:
    """One status of an endpoint: what it means and its body (one type or several)."""

    status: int
    description: str
    bodies: tuple[Body, ...] = (Error,)
    headers: tuple[tuple[str, str], ...] = ()  # (name, description), each a string


@dataclass(frozen=True)
class Endpoint:
    method: str  # lower case, as OpenAPI writes it
    path: str  # in OpenAPI's form: /payments/{payment_id}
    operation_id: str
    summary: str
    answers: tuple[Answer, ...]
    request: Body | None = None
    request_required: bool = True  # False: the body may be left out
    parameters: tuple[dict[str, Any], ...] = ()


# Answers several endpoints share.
BAD_BODY = Answer(400, "the body is not a JSON object of the expected fields; `error` names "
                       "the first problem and lists the expected fields")
TOO_LARGE = Answer(413, f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
INTERNAL = Answer(500, "a bug in paysim: `internal error`, the details only in its log")
REDIS_DOWN = Answer(503, "Redis is unavailable, or Kafka did not take the record in time; "
                         "nothing was done, retry")

# On an answer given again for an Idempotency-Key (a success or a declined card).
REPLAYED = (idempotency.REPLAY_HEADER, "`true` on an answer given again for an "
                                       "Idempotency-Key")
# On an answer whose request put a record on Kafka, when tracing is on.
TRACED = (TRACERESPONSE, "when tracing (OTEL_EXPORTER_OTLP_ENDPOINT) is on: W3C Trace "
                         "Context's `traceresponse`, `00-<trace id>-<span id>-<flags>`, the "
                         "span that sent the record (on a 503, tried to); its trace "
                         "continues the request's `traceparent` when it had a valid one")
# The 503 of a request whose record Kafka did not take: its send's span failed, and is named.
NOT_SENT = dataclasses.replace(REDIS_DOWN, headers=(TRACED,))
TRACEPARENT = {
    "name": "traceparent", "in": "header", "required": False,
    "description": "W3C Trace Context: when tracing is on, what the request sends joins this "
                   "trace (as a child of this span, sampled as its flags say); a missing or "
                   "malformed one starts a new trace",
    "schema": {"type": "string"},
}
NOTIFY_REQUEST: dict[str, Any] = {
    "type": "object",
    "description": "Other fields are ignored.",
    "properties": {"transaction_id": {"type": "string", "pattern": "\\S",
                                      "description": "a payment id (not blank)"}},
    "required": ["transaction_id"],
}
PAYMENT_ID = {"name": "payment_id", "in": "path", "required": True,
              "description": "the payment id POST /authorize answered with",
              "schema": {"type": "string"}}
IDEMPOTENCY_KEY = {
    "name": idempotency.HEADER, "in": "header", "required": False,
    "description": "the same key and body within a day get the first answer again (with "
                   f"{idempotency.REPLAY_HEADER}: true) instead of a second payment; must not "
                   "hold a card number",
    "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_CHARS},
}
DOCUMENT: dict[str, Any] = {"type": "object", "description": "this OpenAPI document",
                            "required": ["openapi", "info", "paths"]}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "post", "/authorize", "authorize",
        "Check a card and put the payment on the requested topic", request=AuthorizeRequest,
        parameters=(IDEMPOTENCY_KEY, TRACEPARENT),
        answers=(
            Answer(200, "accepted: Kafka has the payment; its outcome follows on the topics "
                        "and at GET /payments/{payment_id}", (Accepted,), (REPLAYED, TRACED)),
            Answer(400, "a card check failed (`reason_code` says which), or the request is "
                        "malformed (`error` names the first problem)", (Declined, Error),
                   (REPLAYED,)),
            Answer(409, "a request with this Idempotency-Key is still being processed"),
            TOO_LARGE,
            Answer(422, "the Idempotency-Key was used with another body"),
            INTERNAL, NOT_SENT,
        )),
    Endpoint(
        "post", "/notify_client", "notifyClient",
        "Send a finished payment's notification (and webhook) again", request=NOTIFY_REQUEST,
        answers=(Answer(200, "sent again", (Resent,)), BAD_BODY,
                 Answer(404, "no outcome for this payment (unknown, not finished, or expired)"),
                 TOO_LARGE, INTERNAL, REDIS_DOWN)),
    Endpoint(
        "get", "/payments/{payment_id}", "getPayment",
        "A payment's outcome and its life on the ledger",
        parameters=(PAYMENT_ID,),
        answers=(Answer(200, "the outcome, and the payment's life on the ledger once it has "
                             "one", (PaymentView,)),
                 Answer(404, "no outcome for this payment (unknown, not finished, or expired)"),
                 INTERNAL, Answer(503, "Redis is unavailable; retry"))),
    Endpoint(
        "get", HEALTH_PATH, "health", "Kafka, Redis and the pipeline services, as last checked",
        answers=(Answer(200, "payments are taken (`degraded`: a pipeline service is down, its "
                             "payments wait on Kafka)", (HealthAnswer,)),
                 Answer(503, "Kafka or Redis fails, or the last check is stale",
                        (HealthAnswer,)))),
    Endpoint("get", OPENAPI_PATH, "openapi", "This document",
             answers=(Answer(200, "the OpenAPI 3.1 document", (DOCUMENT,)),)),
)

# Every operation on a payment answers alike (paysim.edge.operations).
OPERATION_ANSWERS = (
    Answer(200, "applied by the ledger; the payment's life as it now is", (OperationApplied,),
           (REPLAYED, TRACED)),
    Answer(202, "on Kafka but not applied within the wait; it applies once (GET the "
                "payment)", (OperationPending,), (TRACED,)),
    BAD_BODY,
    Answer(404, "no such payment (unknown, not finished, or expired)"),
    Answer(409, "the ledger refuses the step, naming the payment's state (or an amount above "
                "what it allows); or a request with this Idempotency-Key is still being "
                "processed", (Refused, Error), (REPLAYED, TRACED)),
    TOO_LARGE,
    Answer(422, "the Idempotency-Key was used with another body"),
    INTERNAL, NOT_SENT,
)


def _operation_endpoint(route: Route) -> Endpoint:
    return Endpoint(
        "post", route.path.replace("<payment_id>", "{payment_id}"), f"{route.kind}Payment",
        route.summary, OPERATION_ANSWERS, request=route.body,
        # void and reverse take no fields, capture and refund none they need: the body may
        # be left out.
        request_required=any(f.required for f in msgspec.structs.fields(route.body)),
        parameters=(PAYMENT_ID, IDEMPOTENCY_KEY, TRACEPARENT))


ENDPOINTS += tuple(_operation_endpoint(route) for route in ROUTES)


def _strict(component: dict[str, Any]) -> dict[str, Any]:
    """No other fields than declared: the edge refuses unknown request fields at every depth,
    and answers hold exactly their declared fields (so the suite's schemathesis run catches
    a field the document does not name)."""
    if component.get("type") == "object" and "additionalProperties" not in component:
        return {**component, "additionalProperties": False}
    return component


def _nulls_take_defaults(component: dict[str, Any]) -> dict[str, Any]:
    """A request's optional fields as the edge takes them: null is the same as left out."""
    required = set(component.get("required", ()))
    properties = {}
    for name, schema in component["properties"].items():
        nullable = {"type": "null"} in schema.get("anyOf", ())
        if name in required or nullable:
            properties[name] = schema
        else:
            properties[name] = {"anyOf": [{k: v for k, v in schema.items() if k != "default"},
                                          {"type": "null"}], "default": schema.get("default")}
    return {**component, "properties": properties}


def _schema(body: Body, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    return refs[body] if isinstance(body, type) else body


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _response(answer: Answer, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    schemas = [_schema(body, refs) for body in answer.bodies]
    response: dict[str, Any] = {
        "description": answer.description,
        "content": _content(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}),
    }
    if answer.headers:
        response["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in answer.headers}
    return response


def _operation(endpoint: Endpoint, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id, "summary": endpoint.summary,
        "responses": {str(answer.status): _response(answer, refs)
                      for answer in endpoint.answers},
    }
    if endpoint.parameters:
        operation["parameters"] = list(endpoint.parameters)
    if endpoint.request is not None:
        operation["requestBody"] = {"required": endpoint.request_required,
                                    "content": _content(_schema(endpoint.request, refs))}
    return operation


@functools.cache
def _document() -> dict[str, Any]:
    declared: list[type] = []
    for endpoint in ENDPOINTS:
        for body in (endpoint.request, *(b for a in endpoint.answers for b in a.bodies)):
            if isinstance(body, type) and body not in declared:
                declared.append(body)
    schemas, components = schema_components(declared, REF)
    refs = dict(zip(declared, schemas, strict=True))
    requests = {endpoint.request.__name__ for endpoint in ENDPOINTS
                if isinstance(endpoint.request, type)}
    components = {name: _strict(_nulls_take_defaults(schema) if name in requests else schema)
                  for name, schema in components.items()}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method] = _operation(endpoint, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "paysim HTTP API", "version": __version__,
                 "description": "The seed's endpoints over paysim's pipeline. Every answer is "
                                "JSON; an error is {\"error\": \"<one line>\"}."},
        "paths": paths,
        "components": {"schemas": components},
    }


def openapi_document() -> dict[str, Any]:
    """The document (a fresh copy: callers may change it)."""
    return msgspec.json.decode(msgspec.json.encode(_document()))

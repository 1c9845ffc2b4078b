"""`paysim schema`: the written contract, as JSON: the HTTP API's OpenAPI document, the topics'
AsyncAPI document, one topic's record schema."""

from __future__ import annotations

import click

from paysim.cli.options import with_settings
from paysim.cli.render import print_json
from paysim.edge.openapi import openapi_document
from paysim.infra.config import Settings
from paysim.pipeline.asyncapi import asyncapi_document, find_topic, known_names, record_schema


@click.group()
def schema() -> None:
    """The HTTP API's and the topics' documents (built from the code's own types)."""


@schema.command()
def openapi() -> None:
    """The HTTP API as OpenAPI 3.1 (what GET /openapi.json serves)."""
    print_json(openapi_document())


@schema.command()
@with_settings()
def asyncapi(settings: Settings) -> None:
    """paysim's topics as AsyncAPI 3.0: channels, keys, headers, a schema per record."""
    print_json(asyncapi_document(settings))


@schema.command()
@click.argument("name")
@with_settings()
def topic(settings: Settings, name: str) -> None:
    """The JSON Schema (draft 2020-12) of one topic's records; NAME is the topic's setting
    (requested) or its name (payments.requested)."""
    found = find_topic(settings, name)
    if found is None:
        raise click.BadParameter(f"unknown topic '{name}'; known: "
                                 f"{', '.join(known_names(settings))}", param_hint="NAME")
    print_json(record_schema(settings, found))

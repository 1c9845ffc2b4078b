"""JSON Schema of paysim's declared types, as the published documents carry them (the HTTP
API's OpenAPI document, the topics' AsyncAPI document).

The schemas come from the types themselves (msgspec.json.schema_components), so a document
cannot say one thing while the code checks another. Two things are added on the way:

- a type's ``one_of`` groups (requests.OneOf: the card's expiry as exp_month and exp_year, or
  as expiry), which msgspec knows nothing of: exactly one way given, whole, the others null or
  left out;
- patterns in the dialect JSON Schema speaks (ECMA-262), not Python's: the declarations end
  their patterns with ``\\Z`` (Python's ``$`` also matches before a trailing newline), which
  ECMA-262 does not know; there ``$`` is already the end of the text.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import msgspec

# Python's end of text; ECMA-262's (without the m flag) is $.
_PY_END = "\\Z"


def ecma_pattern(pattern: str) -> str:
    """A declared (Python) pattern as JSON Schema reads it."""
    return pattern[: -len(_PY_END)] + "$" if pattern.endswith(_PY_END) else pattern


def _ecma(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: ecma_pattern(value) if key == "pattern" and isinstance(value, str)
                else _ecma(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_ecma(item) for item in node]
    return node


def _prose(docstring: str) -> str:
    """A type's docstring as a description: its wrapped lines joined, paragraphs kept."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _one_of_schema(kind: type[msgspec.Struct]) -> list[dict[str, Any]]:
    """One ``anyOf`` per ``one_of`` group of ``kind``: each way given (its fields present and
    not null) while every field of the other ways is null or left out."""
    groups = []
    for group in getattr(kind, "one_of", ()):
        ways = []
        for way in group.ways:
            others = [name for other in group.ways if other is not way for name in other]
            ways.append({
                "required": list(way),
                "properties": {**{name: {"not": {"type": "null"}} for name in way},
                               **{name: {"type": "null"} for name in others}},
            })
        groups.append({"anyOf": ways, "description": f"{group.what}: exactly one way"})
    return groups


def schema_components(kinds: Iterable[type[msgspec.Struct]], ref_prefix: str,
                      ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """A schema per type in ``kinds`` (a ``$ref`` to its component) and every component
    they use, named by type, referred to as ``<ref_prefix><name>``."""
    kinds = tuple(kinds)
    schemas, components = msgspec.json.schema_components(kinds, ref_template=ref_prefix + "{name}")
    for component in components.values():
        if "description" in component:  # msgspec takes the type's docstring as it is
            component["description"] = _prose(component["description"])
    for kind in kinds:
        groups = _one_of_schema(kind)
        if groups:
            components[kind.__name__]["allOf"] = groups
    return _ecma(list(schemas)), _ecma(components)

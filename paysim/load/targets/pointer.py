"""JSON Pointer (RFC 6901): where a template reads a value in an answer or a record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MISSING: Any = object()  # what read() gives when nothing is at the pointer


@dataclass(frozen=True)
class Pointer:
    """A parsed pointer: ``text`` as written, ``tokens`` unescaped (``~1`` is ``/``, ``~0``
    is ``~``). The empty pointer names the whole document."""

    text: str
    tokens: tuple[str, ...]

    def read(self, document: Any) -> Any:
        """The value at the pointer, or MISSING: an absent key, an index out of range or not
        a number, or a step into a value that is neither an object nor an array."""
        value = document
        for token in self.tokens:
            if isinstance(value, dict):
                if token not in value:
                    return MISSING
                value = value[token]
            elif isinstance(value, list):
                # RFC 6901: decimal digits without a leading zero ("-" is past the end).
                if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                    return MISSING
                index = int(token)
                if index >= len(value):
                    return MISSING
                value = value[index]
            else:
                return MISSING
        return value


def parse_pointer(text: str) -> Pointer:
    """A pointer from its text; ValueError (one line) when it is not one."""
    if text == "":
        return Pointer(text, ())
    if not text.startswith("/"):
        raise ValueError(f"a JSON pointer starts with '/' (such as /status), got {text!r}")
    tokens = []
    for raw in text[1:].split("/"):
        # Any "~" not followed by 0 or 1 is an error (RFC 6901 section 3).
        if raw.replace("~0", "").replace("~1", "").count("~"):
            raise ValueError(f"{text!r}: '~' must be written ~0 (and '/' inside a name ~1)")
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return Pointer(text, tuple(tokens))

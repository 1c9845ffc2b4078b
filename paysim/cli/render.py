"""Terminal output shared by the commands: the consoles, escaping, JSON printing.

Anything a command prints that came from a user or from data (a merchant name, a run id, a
report file's text, a Redis key, an error message quoting input) goes through ``safe`` on its
way into rich markup or a Table cell, or ``printable`` when printed plainly: rich markup in it
is shown, not applied, and control characters are shown as escapes, never sent to the terminal.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.console import Console
from rich.markup import escape

# No emoji codes: text such as `paysim:ledger:...` holds ":ledger:", which rich would draw as 📒.
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)

# C0 controls (ESC, CR, LF, TAB, ...), DEL and C1 (0x9b is a one-byte CSI on some terminals);
# the bidirectional overrides, embeddings and isolates, which reorder what follows them; and the
# Unicode line and paragraph separators, which start a new line on some terminals.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                      "\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(value: object) -> str:
    """``value`` as text with every control character shown as an escape (\\x1b, \\r, \\u202e):
    for plain printing, and one line whatever it holds."""
    return _CONTROL.sub(_visible, str(value))


def safe(value: object) -> str:
    """``value`` ready to put into rich markup or a Table cell: printed literally, as
    ``printable`` shows it, whatever brackets it holds."""
    text = printable(value)
    body = text.rstrip("\\")
    if body == text:
        return escape(text)
    # Trailing backslashes would escape a tag that follows them in the markup, and rich's escape
    # doubles only an odd run. Doubled, then ended by an empty span, they print once each both
    # at the end of the markup and before a closing tag.
    return escape(body) + "\\" * (2 * (len(text) - len(body))) + "[dim][/dim]"


def print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON for a pipe. json.dumps writes
    # control characters as \u escapes.
    print(json.dumps(data, indent=2, sort_keys=False, default=str))

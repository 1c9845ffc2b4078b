"""The CLI's escaping of user-supplied text: no rich markup, no control character gets through."""

from __future__ import annotations

import pytest
from rich.console import Console
from rich.table import Table

from paysim.cli import render
from paysim.cli.render import printable, safe

HOSTILE = "Shop [/bold] end [link=http://x]y[/link] \x1b[31m"


def shown(markup: str) -> str:
    """What a terminal gets for this markup: rendered by a colour console like the CLI's."""
    out = Console(force_terminal=True, color_system="standard", width=300, highlight=False,
                  emoji=False)
    with out.capture() as captured:
        out.print(markup)
    return captured.get()


@pytest.mark.parametrize(("raw", "visible"), [
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\rb\nc\td\x00e\x7ff", "a\\rb\\nc\\td\\x00e\\x7ff"),
    ("\x9b31m", "\\x9b31m"),  # C1 control sequence introducer
    ("abc\u202edcba\u2066x\u2069\u200f", "abc\\u202edcba\\u2066x\\u2069\\u200f"),  # bidi
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("Café 東京 💳 - ok", "Café 東京 💳 - ok"),  # printable text is left alone
])
def test_printable_shows_control_characters_as_escapes(raw: str, visible: str) -> None:
    assert printable(raw) == visible


def test_printable_takes_any_value() -> None:
    assert printable(None) == "None" and printable(42) == "42"


@pytest.mark.parametrize("raw", [
    HOSTILE, "[bold]x", "[/]", "[/bold]", "a\\", "a\\\\", "a\\[b]", "\\\\[b]",
    "[red]x[/red] \\[y]", ":ledger:",
    "paysim:ledger:run:tok_1", "[link=http://evil]click[/link]", "[@click=app.quit]x[/]",
])
def test_safe_prints_the_text_literally(raw: str) -> None:
    assert shown(safe(raw)).rstrip("\n") == printable(raw)


def test_safe_inside_markup_keeps_the_surrounding_style() -> None:
    for value in ("a [/] b ends in a backslash\\", "two\\\\", "\\"):
        out = shown(f"[red]{safe(value)}[/] after")
        assert out.startswith("\x1b[31m" + value + "\x1b[0m after"), out


def test_safe_leaves_no_escape_byte_and_no_hidden_link() -> None:
    out = shown(safe(HOSTILE))
    assert "\x1b]8;" not in out  # an OSC 8 hyperlink
    assert out.count("\x1b") == 0
    assert "[/bold]" in out and "[link=http://x]y[/link]" in out and "\\x1b[31m" in out


def test_table_cells_and_the_shared_consoles_show_emoji_codes_literally() -> None:
    table = Table("where")
    table.add_row(safe("redis paysim:ledger:run-1:tok_9"))
    with render.console.capture() as captured:
        render.console.print(table)
        render.console.print(safe("a :credit_card: b"))
    out = captured.get()
    assert "paysim:ledger:run-1:tok_9" in out and ":credit_card:" in out
    assert not render.err_console._emoji

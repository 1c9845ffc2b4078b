"""Reading the end of a component's log for error messages."""

from __future__ import annotations

from collections import deque
from pathlib import Path

TAIL_LINES = 15


def tail_lines(path: Path, count: int = TAIL_LINES) -> list[str]:
    """The last ``count`` lines of a text file; empty when it does not exist."""
    try:
        with path.open(errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=count)]
    except OSError:
        return []

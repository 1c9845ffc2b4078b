"""Reading the end of a component's log for error messages."""

from __future__ import annotations

from collections import deque
from pathlib import Path

TAIL_LINES = 15


def tail_lines(path: Path, count: int = TAIL_LINES, start: int = 0) -> list[str]:
    """The last ``count`` lines of a text file after byte ``start``; empty when none."""
    try:
        with path.open("rb") as handle:
            handle.seek(start if start <= path.stat().st_size else 0)
            lines = deque(handle, maxlen=count)
    except OSError:
        return []
    return [line.decode(errors="replace").rstrip("\n") for line in lines]

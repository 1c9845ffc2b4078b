"""Run `paysim` in the test's own process, the way tests.helpers.run_paysim runs it in a child.

A child costs an interpreter start and paysim's imports (a second or more on a loaded machine)
for a check that fails in milliseconds; in-process, the command runs through the same entry
point (paysim.cli.main), and the result is the same CompletedProcess: the exit code, and what
reached file descriptors 1 and 2 (capfd: Python's print, click, rich and any C library alike).

What a child would not share is set up as in a new process and put back after each call:
- the environment: the caller's PAYSIM_* variables dropped, ``env`` set (as run_paysim does);
- the SIGINT/SIGTERM handlers, which run-all and the services replace;
- the root logger, bare as a new process's rather than pytest's capturing one: a warning reaches
  stderr as Python's last resort prints it, and a service's logging.basicConfig writes there.
The rich consoles in paysim.cli.render look up sys.stdout/sys.stderr, and COLUMNS, each time
they print: capfd sees them, and ``env={"COLUMNS": "400"}`` widens them.

A command that starts processes still starts them (`run-all --detach` its supervisor, `stack
up` java): only the command itself runs here. What must be a process of its own stays with
run_paysim: a command that should keep running (a service that starts), and anything a test
sends a real signal to.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import pytest

from paysim.cli import main

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PaysimCli:
    """``paysim_cli(*args, env=...)``: a CompletedProcess, as run_paysim returns."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 capfd: pytest.CaptureFixture[str]) -> None:
        self._monkeypatch = monkeypatch
        self._capfd = capfd

    def __call__(self, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        with self._monkeypatch.context() as patch:
            for name in [name for name in os.environ if name.startswith("PAYSIM_")]:
                patch.delenv(name)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            self._capfd.readouterr()  # only this command's output
            code = _run(list(args))
            out, err = self._capfd.readouterr()
        return subprocess.CompletedProcess(["paysim", *args], code, out, err)


def _run(argv: list[str]) -> int:
    """paysim.cli.main(argv)'s exit code, the process-wide state it changed put back."""
    handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    root = logging.getLogger()
    root_handlers, root_level = root.handlers, root.level
    root.handlers = []
    try:
        main(argv)
    except SystemExit as ended:
        return ended.code if isinstance(ended.code, int) else int(ended.code is not None)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        root.handlers = root_handlers
        root.setLevel(root_level)  # setLevel also drops the loggers' cached levels
    return 0  # main always exits; a return is a success
